//! The quickstart's demo project as library functions: write the project
//! (data, feature definitions with contracts, pipeline, model repository,
//! `greenbelt.toml`), materialize its feature store, and build the demo
//! requests. `greenbelt quickstart` calls these, starts the [`crate::App`]
//! and prints what happens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use greenbelt_features::offline::{MaterializeOptions, OfflineStore};
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::service::{CacheOptions, OnlineService};

use crate::error::{AppError, Result};

/// The bundled model: a scikit-learn logistic regression on 20 features
/// (see fixtures/README.md for how it is made).
const LOGREG_ONNX: &[u8] = include_bytes!("../../../fixtures/models/logreg/1/model.onnx");
/// A sample row from the fixture's golden inputs.
const SAMPLE_ROW: [f32; 20] = [
    3.165_635_3,
    0.302_028_33,
    -0.870_736_8,
    -1.609_842_2,
    1.601_622_7,
    0.696_420_55,
    4.544_268,
    -1.975_607_6,
    1.928_777_6,
    -0.754_787_2,
    3.513_608_5,
    -7.116_183,
    -0.362_322_93,
    -2.499_474_8,
    0.791_320_5,
    1.156_710_9,
    -1.933_267_2,
    -4.366_487_5,
    -0.445_443_1,
    2.801_562_5,
];
/// The demo pipeline: trained on point-in-time features from the feature
/// store (the same file as examples/fraud/pipeline-features.toml).
const PIPELINE_FEATURES: &str = include_str!("../../../examples/fraud/pipeline-features.toml");
/// The demo feature definitions (examples/fraud/features.toml).
const FEATURES: &str = include_str!("../../../examples/fraud/features.toml");
/// Demo data covers the 60 days before "now" (minus this margin), so the
/// newest online values are within their views' TTLs when served.
const DATA_END_MARGIN_S: u64 = 180;
const DEMO_ROWS: usize = 20_000;

pub fn write_project(
    dir: &Path,
    http_addr: &str,
    grpc_addr: &str,
    gbdt: bool,
) -> Result<(PathBuf, PathBuf)> {
    let model_dir = dir.join("models/logreg");
    std::fs::create_dir_all(model_dir.join("1"))
        .map_err(AppError::io(format!("creating {}", model_dir.display())))?;
    write(model_dir.join("1/model.onnx"), LOGREG_ONNX)?;
    write(
        model_dir.join("config.toml"),
        "# Per-model settings; every key is optional.\n\
         backend = \"auto\"            # auto | native | onnxruntime | tract\n\
         version_policy = { latest = 1 }\n\
         \n\
         # Dynamic batching (off when this table is absent):\n\
         # [batching]\n\
         # max_batch_size = 32\n\
         # max_queue_delay = \"500us\"\n",
    )?;
    std::fs::create_dir_all(dir.join("data"))
        .map_err(AppError::io(format!("creating {}/data", dir.display())))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = now.saturating_sub(60 * 86_400 + DATA_END_MARGIN_S);
    let csv = greenbelt_control::demo::fraud_csv_from(DEMO_ROWS, 7, 0.0, start);
    write(dir.join("data/labels.csv"), labels(&csv))?;
    write(dir.join("data/transactions.csv"), csv)?;
    write(dir.join("features.toml"), FEATURES)?;
    // Remove what an earlier quickstart in this directory materialized.
    for old in ["data/offline", "data/online.redb"] {
        let p = dir.join(old);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let pipeline = dir.join("pipeline.toml");
    let text = if gbdt {
        PIPELINE_FEATURES.to_string()
    } else {
        // Neither the native engine nor ONNX Runtime: tract cannot run
        // trees; train a logistic regression.
        PIPELINE_FEATURES
            .replace("algorithm = \"gbdt\"", "algorithm = \"logreg\"")
            .lines()
            .map(|l| {
                if l.starts_with("params =") {
                    "params = { C = 1.0 }"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    write(&pipeline, text)?;
    let config_path = dir.join("greenbelt.toml");
    let d = dir.display();
    write(
        &config_path,
        format!(
            "# Greenbelt project file. Every setting has a working default.\n\
             [server]\n\
             http_addr = \"{http_addr}\"\n\
             grpc_addr = \"{grpc_addr}\"\n\
             \n\
             [repository]              # plain model repository: <path>/<model>/<version>/model.onnx\n\
             path = \"{d}/models\"\n\
             \n\
             [telemetry]               # one JSON line per request, to a file instead of the terminal\n\
             log_file = \"{d}/logs/requests.log\"\n\
             \n\
             [registry]                # versions, aliases, audit history (SQLite file here)\n\
             url = \"sqlite://{d}/registry.db\"\n\
             artifacts = \"{d}/artifacts\"\n\
             \n\
             [features]                # the feature store: /features API, entity-key requests\n\
             definitions = \"{d}/features.toml\"\n\
             canary_interval = \"1m\"   # synthetic freshness canary, exported on /metrics\n\
             \n\
             [[deployments]]           # serve /v2/models/fraud from fraud@champion\n\
             name = \"fraud\"\n\
             alias = \"champion\"\n\
             sticky_header = \"x-user-id\"  # a user stays on one version during a canary\n\
             \n\
             [deployments.config.features]  # requests may send user_id + merchant_id instead of the features\n\
             service = \"fraud_model\"\n\
             \n\
             [deployments.rollout]     # `greenbelt rollout start fraud --version N`\n\
             steps = [{{ set_weight = 10 }}, {{ analysis = 2 }}, {{ set_weight = 50 }}, {{ analysis = 2 }}]\n\
             \n\
             [deployments.rollout.analysis]\n\
             interval = \"10s\"\n\
             min_samples = 50\n\
             conditions = [\"error_rate <= 0.01\", \"p99_ms <= stable.p99_ms * 2 + 5\"]\n"
        ),
    )?;
    let row: Vec<String> = SAMPLE_ROW.iter().map(|x| x.to_string()).collect();
    write(
        dir.join("request.json"),
        format!(
            "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,20],\"datatype\":\"FP32\",\"data\":[{}]}}]}}\n",
            row.join(",")
        ),
    )?;
    // One transaction's features, in the feature service's order
    // (user_profile: tx count 24h, avg amount 30d, device age; merchant risk;
    // user_last_tx: amount, distance, foreign).
    write(
        dir.join("fraud-request.json"),
        "{\"inputs\":[{\"name\":\"input\",\"shape\":[1,7],\"datatype\":\"FP32\",\"data\":[6,120.0,12,0.91,480.5,250.0,1]}]}\n",
    )?;
    Ok((config_path, pipeline))
}

/// The entity rows the pipeline trains on: keys, event time and label of
/// every transaction (the features come from the store, as of that time).
pub fn labels(csv: &str) -> String {
    let pick = ["tx_id", "user_id", "merchant_id", "event_ts", "is_fraud"];
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let idx: Vec<usize> = pick
        .iter()
        .filter_map(|c| header.iter().position(|h| h == c))
        .collect();
    let mut out = pick.join(",");
    out.push('\n');
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let row: Vec<&str> = idx
            .iter()
            .map(|i| cells.get(*i).copied().unwrap_or(""))
            .collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The users and merchants of the newest `n` transactions (their online
/// features are fresh), as an entity-key infer request body.
pub fn entity_request(csv: &str, n: usize) -> String {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or(0);
    let (u, m) = (col("user_id"), col("merchant_id"));
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let last: Vec<&Vec<&str>> = rows.iter().rev().take(n).collect();
    let pick = |i: usize| -> Vec<serde_json::Value> {
        last.iter()
            .map(|r| serde_json::Value::from(r.get(i).copied().unwrap_or("")))
            .collect()
    };
    serde_json::json!({"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [last.len()], "data": pick(u)},
        {"name": "merchant_id", "datatype": "BYTES", "shape": [last.len()], "data": pick(m)},
    ]})
    .to_string()
}

fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, contents).map_err(AppError::io(format!("writing {}", path.display())))
}

/// One materialized view of the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct Materialized {
    pub view: String,
    pub rows: u64,
    pub partitions: usize,
    pub quarantined: u64,
    pub online_keys: u64,
    pub seconds: f64,
}

/// Materialize every view of the demo's feature store over its whole data
/// range, offline (Parquet) and online (the embedded store); `each` hears
/// about every view when it is done.
pub async fn materialize(
    features: &Path,
    each: &mut dyn FnMut(&Materialized),
) -> Result<Vec<Materialized>> {
    let defs = Arc::new(greenbelt_features::Definitions::load(features)?);
    let store = OfflineStore::open(&defs.offline_path)?;
    let online = OnlineStore::open(&defs.online_url).await?;
    let svc = OnlineService::new(defs.clone(), online, CacheOptions::default());
    let now = greenbelt_features::time::now_us();
    let (start, end) = (now - 62 * 86_400_000_000, now + 60_000_000);
    let opts = MaterializeOptions::default();
    let mut out = Vec::new();
    for view in defs.views.keys() {
        let t = tokio::time::Instant::now();
        let r = greenbelt_features::offline::materialize(&defs, &store, view, start, end, &opts)
            .await
            .map_err(|e| {
                AppError::Invalid(format!("materializing feature view \"{view}\": {e}"))
            })?;
        let keys = svc
            .materialize_online(&store, view, start, end, &opts.engine)
            .await
            .map_err(|e| {
                AppError::Invalid(format!("loading feature view \"{view}\" online: {e}"))
            })?;
        let m = Materialized {
            view: view.clone(),
            rows: r.rows,
            partitions: r.partitions_written.len(),
            quarantined: r.quarantined,
            online_keys: keys,
            seconds: t.elapsed().as_secs_f64(),
        };
        each(&m);
        out.push(m);
    }
    Ok(out)
}

/// What one demo request got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The `x-greenbelt-model-version` header ("" when absent).
    pub version: String,
    pub body: String,
}

/// The demo's client of the server the quickstart started.
pub struct DemoClient {
    client: reqwest::Client,
    base: String,
}

impl DemoClient {
    /// A client of `base` (`http://host:port`), each call bounded by 10 s.
    pub fn new(base: &str) -> Result<DemoClient> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| AppError::Remote(e.to_string()))?;
        Ok(DemoClient {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST a JSON body to `path`.
    pub async fn post(&self, path: &str, body: &str) -> Result<Answer> {
        let url = self.url(path);
        let resp = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| AppError::Remote(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get("x-greenbelt-model-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp
            .text()
            .await
            .map_err(|e| AppError::Remote(format!("POST {url}: {e}")))?;
        Ok(Answer {
            status,
            version,
            body,
        })
    }

    /// The first 200 from `path`, retried every 100 ms for at most `within`
    /// (a deployment loads its alias in the background).
    pub async fn first_ok(
        &self,
        path: &str,
        body: &str,
        within: std::time::Duration,
    ) -> Option<Answer> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(a) = self.post(path, body).await
                && a.status == 200
            {
                return Some(a);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }

    /// Send `n` requests to `path`, cycling through `bodies`; how many got a 200.
    pub async fn traffic(&self, path: &str, bodies: &[&str], n: usize) -> Result<usize> {
        let mut ok = 0;
        for i in 0..n {
            let Some(body) = bodies.get(i % bodies.len().max(1)) else {
                break;
            };
            if self.post(path, body).await?.status == 200 {
                ok += 1;
            }
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn the_demo_client_reports_statuses_versions_and_counts_ok_answers() {
        use axum::routing::post;
        // Answers 200 (version 7) to bodies that say "good", 400 otherwise.
        let app = axum::Router::new().route(
            "/infer",
            post(|body: String| async move {
                if body.contains("good") {
                    (
                        axum::http::StatusCode::OK,
                        [("x-greenbelt-model-version", "7")],
                        "ok",
                    )
                } else {
                    (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("x-greenbelt-model-version", "7")],
                        "bad",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let demo = DemoClient::new(&format!("http://{addr}/")).unwrap();
        assert_eq!(demo.url("/infer"), format!("http://{addr}/infer"));
        let a = demo.post("/infer", "good").await.unwrap();
        assert_eq!(
            (a.status, a.version.as_str(), a.body.as_str()),
            (200, "7", "ok")
        );
        assert_eq!(demo.post("/infer", "nope").await.unwrap().status, 400);
        assert_eq!(
            demo.traffic("/infer", &["good", "nope"], 5).await.unwrap(),
            3
        );
        assert_eq!(demo.traffic("/infer", &[], 5).await.unwrap(), 0);
        assert!(
            demo.first_ok("/infer", "good", std::time::Duration::from_secs(2))
                .await
                .is_some()
        );
        assert!(
            demo.first_ok("/infer", "nope", std::time::Duration::from_millis(300))
                .await
                .is_none()
        );
        // Nothing listening: a named error, not a panic.
        let gone = DemoClient::new("http://127.0.0.1:1").unwrap();
        let e = gone.post("/infer", "good").await.unwrap_err();
        assert!(
            e.to_string().contains("POST http://127.0.0.1:1/infer"),
            "{e}"
        );
    }

    const CSV: &str = "tx_id,user_id,merchant_id,event_ts,amount,is_fraud\n\
                       t1,u00001,m001,2026-01-01T00:00:00Z,3.5,0\n\
                       t2,u00002,m002,2026-01-01T00:01:00Z,7.0,1\n\
                       t3,u00003,m001,2026-01-01T00:02:00Z,1.0,0\n";

    #[test]
    fn labels_keep_keys_time_and_label() {
        assert_eq!(
            labels(CSV),
            "tx_id,user_id,merchant_id,event_ts,is_fraud\n\
             t1,u00001,m001,2026-01-01T00:00:00Z,0\n\
             t2,u00002,m002,2026-01-01T00:01:00Z,1\n\
             t3,u00003,m001,2026-01-01T00:02:00Z,0\n"
        );
    }

    #[test]
    fn entity_requests_carry_the_newest_users_and_merchants() {
        let v: serde_json::Value = serde_json::from_str(&entity_request(CSV, 2)).unwrap();
        assert_eq!(v["inputs"][0]["name"], "user_id");
        assert_eq!(
            v["inputs"][0]["data"],
            serde_json::json!(["u00003", "u00002"])
        );
        assert_eq!(v["inputs"][1]["data"], serde_json::json!(["m001", "m002"]));
        assert_eq!(v["inputs"][1]["shape"], serde_json::json!([2]));
    }

    #[test]
    fn the_project_parses_as_config_features_and_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let (config, pipeline) = write_project(dir.path(), "127.0.0.1:0", "", false).unwrap();
        let c = greenbelt_serve::Config::load(Some(&config)).unwrap();
        assert_eq!(c.deployments[0].name, "fraud");
        greenbelt_features::Definitions::load(&dir.path().join("features.toml")).unwrap();
        greenbelt_control::pipeline::definition::PipelineDef::read(&pipeline).unwrap();
        let text = std::fs::read_to_string(&pipeline).unwrap();
        assert!(
            text.contains("algorithm = \"logreg\""),
            "no ONNX Runtime: no trees"
        );
    }
}
