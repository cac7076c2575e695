use greenbelt_serve::{Config, Server};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Copy fixture `name/version` into `repo/as_name/as_version/model.onnx`.
pub fn copy_model(repo: &Path, name: &str, version: u32, as_name: &str, as_version: u32) {
    let dst = repo.join(as_name).join(as_version.to_string());
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(
        fixtures().join(format!("models/{name}/{version}/model.onnx")),
        dst.join("model.onnx"),
    )
    .unwrap();
}

pub fn write_model_config(repo: &Path, model: &str, toml: &str) {
    std::fs::create_dir_all(repo.join(model)).unwrap();
    std::fs::write(repo.join(model).join("config.toml"), toml).unwrap();
}

pub struct TestServer {
    pub state: std::sync::Arc<greenbelt_serve::infer::AppState>,
    pub http: String,
    pub grpc: String,
    pub repo: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
    pub client: reqwest::Client,
}

/// Start a server over a fresh repository that `setup` fills; `extra` is
/// appended to the generated greenbelt.toml. Model control is on (the
/// repository tests load and unload) unless `extra` has its own `[auth]`.
pub async fn start(setup: impl FnOnce(&Path), extra: &str) -> TestServer {
    start_with(setup, extra, None).await
}

/// The greenbelt.toml `start` writes for `repo`.
pub fn config_text(repo: &Path, extra: &str) -> String {
    let auth = if extra.contains("[auth]") {
        ""
    } else {
        "[auth]\nmodel_control = \"explicit\"\n"
    };
    format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\n{extra}\n[repository]\npath = \"{}\"\n{auth}",
        repo.display()
    )
}

/// [`start`] with a feature source for models with `[features]`.
pub async fn start_with(
    setup: impl FnOnce(&Path),
    extra: &str,
    features: Option<std::sync::Arc<dyn greenbelt_serve::features::FeatureSource>>,
) -> TestServer {
    let repo = tempfile::tempdir().unwrap();
    setup(repo.path());
    let text = config_text(repo.path(), extra);
    let config = Config::from_toml_str(&text, Path::new("test.toml"), std::iter::empty()).unwrap();
    let server = Server::build_with(config, features).await.unwrap();
    let state = server.state.clone();
    let http = format!("http://{}", server.http_addr().unwrap());
    let grpc = format!("http://{}", server.grpc_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestServer {
        state,
        http,
        grpc,
        repo,
        stop: Some(tx),
        join: Some(join),
        client: reqwest::Client::new(),
    }
}

impl TestServer {
    /// Signal shutdown (as SIGTERM does) without waiting for it.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.http))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, &[]).await
    }

    /// POST with extra headers (`authorization`, `x-greenbelt-track`, ...).
    pub async fn post_with(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.http)).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.client.get(format!("{}{path}", self.http));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The `/metrics` text (the Prometheus 0.0.4 format: no Accept header).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Infer `rows` copies of the golden first row of logreg.
    pub async fn infer_logreg(&self, path: &str) -> (u16, Value) {
        self.post(path, &logreg_request(1)).await
    }
}

pub fn logreg_row() -> Vec<f32> {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/logreg_v1.json")).unwrap(),
    )
    .unwrap();
    g["inputs"][0]["data"].as_array().unwrap()[..20]
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// Golden probabilities of row 0 for logreg `version`.
pub fn logreg_golden_probs(version: u32) -> Vec<f64> {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("golden/logreg_v{version}.json")))
            .unwrap(),
    )
    .unwrap();
    let out = g["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    out["data"].as_array().unwrap()[..2]
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

pub fn logreg_request(rows: usize) -> Value {
    let row = logreg_row();
    let data: Vec<f32> = (0..rows).flat_map(|_| row.clone()).collect();
    json!({"inputs": [{"name": "input", "shape": [rows, 20], "datatype": "FP32", "data": data}]})
}

pub fn probs(resp: &Value) -> Vec<f64> {
    let out = resp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

pub fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}
