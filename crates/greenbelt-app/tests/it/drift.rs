//! Live drift monitoring, delayed labels and drift routing through a live
//! server: a deployment whose stable version carries a reference profile
//! (registered beside its model file) answers in-distribution traffic, then
//! drifted traffic; the closed windows' PSI / KS / drifted-feature gauges
//! move on `/metrics` and `/admin/drift`; drifted rows, and only they,
//! reach the challenger; labels posted for answered request ids give the
//! version's rolling accuracy and AUC.

use std::path::Path;
use std::time::Duration;

use greenbelt_app::App;
use greenbelt_drift::model::{ModelProfile, Task};
use greenbelt_serve::Config;
use serde_json::{Value, json};

const FEATURES: usize = 20;

/// Deterministic standard normals (Box–Muller on a 64-bit LCG).
struct Normals(u64);

impl Normals {
    fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn next(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn write_config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n\
         [telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [registry]\nurl = \"sqlite://{d}/registry.db\"\nartifacts = \"{d}/artifacts\"\npoll_interval_ms = 50\n\
         [drift]\nwindow = \"60s\"\nwindow_requests = 120\ntick = \"50ms\"\nmin_window_rows = 20\n\
         [[deployments]]\nname = \"scorer\"\nalias = \"champion\"\n\
         [[deployments.shadow]]\nalias = \"challenger\"\nfraction = 0.0\n\
         [deployments.drift_routing]\nchallenger = \"challenger\"\nlower_quantile = 0.001\nupper_quantile = 0.999\n\
         [[deployments]]\nname = \"router\"\nmodel = \"scorer\"\nalias = \"champion\"\n\
         [[deployments.shadow]]\nalias = \"challenger\"\nfraction = 0.0\n\
         [deployments.drift_routing]\nchallenger = \"challenger\"\naction = \"route\"\nlower_quantile = 0.001\nupper_quantile = 0.999\n",
        d = dir.display()
    );
    let path = dir.join("greenbelt.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path)).unwrap()
}

/// The logreg fixture with a profile of 20 standard-normal features beside it.
fn model_with_profile(dir: &Path) -> std::path::PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg/1/model.onnx");
    let file = dir.join("model.onnx");
    std::fs::copy(&fixture, &file).unwrap();
    let mut rng = Normals(7);
    let rows = 4000;
    let matrix: Vec<f64> = (0..rows * FEATURES).map(|_| rng.next()).collect();
    let scores: Vec<f64> = (0..rows).map(|_| rng.uniform()).collect();
    let names: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    let profile = ModelProfile::build(
        Task::Classification,
        "input",
        &names,
        &matrix,
        "probabilities",
        &scores,
        1,
    )
    .unwrap();
    std::fs::write(
        greenbelt_serve::repository::profile_path(&file),
        serde_json::to_vec(&profile).unwrap(),
    )
    .unwrap();
    file
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

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Send `n` one-row requests with features drawn as `shift + N(0, 1)`,
/// each with its own id; returns the ids and the answered versions.
async fn send(
    client: &reqwest::Client,
    base: &str,
    rng: &mut Normals,
    n: usize,
    shift: f64,
    tag: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let row: Vec<f64> = (0..FEATURES).map(|_| shift + rng.next()).collect();
        let id = format!("{tag}-{i}");
        let body = json!({
            "id": id,
            "inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]
        });
        let r = client
            .post(format!("{base}/v2/models/scorer/infer"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        ids.push(id);
    }
    ids
}

/// Wait until `/admin/drift/scorer` shows a closed window of the stable
/// version with at least `rows` rows and opened after `after_ms`.
async fn closed_window(client: &reqwest::Client, base: &str, after_ms: u64, rows: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = get_json(client, &format!("{base}/admin/drift/scorer")).await;
        let stable = v["versions"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["monitored"] == true && x["version"] == 1)
                .cloned()
        });
        if let Some(w) = stable.as_ref().map(|s| s["last_window"].clone())
            && w["opened_ms"].as_u64().is_some_and(|o| o >= after_ms)
            && w["features"][0][1]["rows"]
                .as_u64()
                .is_some_and(|r| r >= rows)
        {
            return w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window closed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_moves_the_metrics_routes_drifted_rows_and_labels_give_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let file = model_with_profile(dir.path());
    register_champion_and_challenger(&config, "scorer", &file).await;
    let running = App::build(config).await.unwrap().spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client
            .get(format!("{base}/v2/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        let both = client
            .get(format!("{base}/admin/drift/scorer"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200);
        let versions = match both {
            Some(r) => r.json::<Value>().await.unwrap()["versions"]
                .as_array()
                .map_or(0, Vec::len),
            None => 0,
        };
        if ready && versions == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready with both versions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rng = Normals(99);

    // In distribution: small PSI, nothing drifted, nothing to the challenger.
    let t0 = now_ms(&client, &base).await;
    let calm = send(&client, &base, &mut rng, 120, 0.0, "calm").await;
    let w = closed_window(&client, &base, t0, 100).await;
    let psi0 = w["features"][0][1]["psi"].as_f64().unwrap();
    assert!(psi0 < 0.2, "in-distribution PSI {psi0}: {w}");
    let text = metrics_text(&client, &base).await;
    assert!(
        text.contains("greenbelt_drift_psi{model=\"scorer\",version=\"1\",feature=\"f0\"}"),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "greenbelt_prediction_confidence_mean{model=\"scorer\",version=\"1\"}"
        )
        .is_some()
    );

    // Drifted: every feature shifted by 3 standard deviations.
    let t1 = now_ms(&client, &base).await;
    let shifted = send(&client, &base, &mut rng, 120, 3.0, "shifted").await;
    let w = closed_window(&client, &base, t1, 100).await;
    let psi1 = w["features"][0][1]["psi"].as_f64().unwrap();
    let ks1 = w["features"][0][1]["ks_statistic"].as_f64().unwrap();
    assert!(psi1 > 1.0 && ks1 > 0.8, "drifted PSI {psi1}, KS {ks1}: {w}");
    assert_eq!(w["drifted"].as_array().unwrap().len(), FEATURES, "{w}");
    let text = metrics_text(&client, &base).await;
    let drifted = sample(
        &text,
        "greenbelt_drift_drifted_features{model=\"scorer\",version=\"1\"}",
    );
    assert_eq!(drifted, Some(FEATURES as f64), "{text}");
    let psi_metric = sample(
        &text,
        "greenbelt_drift_psi{model=\"scorer\",version=\"1\",feature=\"f0\"}",
    )
    .unwrap();
    assert!(psi_metric > 1.0, "{text}");
    // The built-in dashboard's drift panel reads the same window.
    let dash: Value = get_json(&client, &format!("{base}/dashboard/data")).await;
    let scorer = dash["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "scorer").cloned())
        .unwrap();
    let v1 = scorer["versions"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["version"] == "1").cloned())
        .unwrap();
    assert_eq!(v1["drift"]["drifted"], FEATURES, "{dash}");
    assert!(v1["drift"]["worst_psi"].as_f64().unwrap() > 1.0, "{dash}");

    // Routing: the shifted rows (far outside the 0.1%..99.9% reference
    // range) were mirrored to the challenger; the calm ones, bar a rare
    // tail row, were not.
    let mirrored = sample(
        &text,
        "greenbelt_drift_routed_requests_total{deployment=\"scorer\",slice=\"drifted\",action=\"mirrored\"}",
    )
    .unwrap_or(0.0);
    let in_dist = sample(
        &text,
        "greenbelt_drift_routed_requests_total{deployment=\"scorer\",slice=\"in_distribution\",action=\"none\"}",
    )
    .unwrap_or(0.0);
    assert!(
        (120.0..150.0).contains(&mirrored),
        "mirrored {mirrored}: {text}"
    );
    assert!(in_dist > 90.0, "in distribution {in_dist}: {text}");
    assert_eq!(mirrored + in_dist, 240.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shadow: Value = get_json(&client, &format!("{base}/admin/shadow/scorer")).await;
        let compared = shadow[0]["counters"]["compared"].as_f64().unwrap_or(0.0);
        if compared == mirrored {
            assert_eq!(shadow[0]["version"], 2, "{shadow}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shadow saw {compared} of {mirrored}: {shadow}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `action = "route"`: the challenger answers drifted requests itself.
    let answered_by = |shift: f64| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let row: Vec<f64> = vec![shift; FEATURES];
            let body = json!({"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]});
            let r: Value = client
                .post(format!("{base}/v2/models/router/infer"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["model_version"].as_str().unwrap().to_string()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answered_by(0.0).await != "1" || answered_by(5.0).await != "2" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "router never routed by drift"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered_by(0.1).await, "1");
    assert_eq!(answered_by(-6.0).await, "2");

    // Delayed labels: the calm requests, labelled with what the model said
    // for half and the opposite for the other half.
    let labels: Vec<Value> = calm
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "label": if i % 2 == 0 { 1 } else { 0 }}))
        .chain(std::iter::once(json!({"id": "never-seen", "label": 1})))
        .collect();
    let r = client
        .post(format!("{base}/v2/models/scorer/labels"))
        .json(&json!({ "labels": labels }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["joined"], 120, "{got}");
    assert_eq!(got["unknown"], 1, "{got}");
    let q = &got["quality"][0];
    assert_eq!(q["version"], 1, "{got}");
    assert_eq!(q["labelled"], 120, "{got}");
    let acc = q["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{got}");
    let text = metrics_text(&client, &base).await;
    assert_eq!(
        sample(
            &text,
            "greenbelt_model_accuracy{model=\"scorer\",version=\"1\"}"
        ),
        Some(acc),
        "{text}"
    );
    assert!(sample(&text, "greenbelt_model_auc{model=\"scorer\",version=\"1\"}").is_some());
    assert_eq!(
        sample(
            &text,
            "greenbelt_labels_total{model=\"scorer\",outcome=\"joined\"}"
        ),
        Some(120.0)
    );
    // The same from a file, as `greenbelt labels ingest` sends it.
    let csv = dir.path().join("labels.csv");
    let mut text = String::from("id,label\n");
    for id in &shifted {
        text.push_str(&format!("{id},1\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let labels = greenbelt_app::labels::read(&csv).unwrap();
    let got = greenbelt_app::labels::send(&base, "scorer", &labels, None)
        .await
        .unwrap();
    assert_eq!(
        (got.sent, got.joined, got.unknown),
        (120, 120, 0),
        "{got:?}"
    );
    assert_eq!(got.quality[0]["labelled"], 240, "{got:?}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,truth\nx,1\n").unwrap();
    let e = greenbelt_app::labels::read(&bad).unwrap_err().to_string();
    assert!(e.contains("no \"label\" column"), "{e}");
    // A malformed body names the fix.
    let r = client
        .post(format!("{base}/v2/models/scorer/labels"))
        .json(&json!({ "labels": [{"id": 1}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("labels body"));
    running.stop().await.unwrap();
}

/// The monitor's clock now: the last closed window's close time, or 0.
async fn now_ms(client: &reqwest::Client, base: &str) -> u64 {
    let v: Value = get_json(client, &format!("{base}/admin/drift/scorer")).await;
    v["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["last_window"]["closed_ms"].as_u64())
        .max()
        .unwrap_or(0)
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The fraud demo's features, in the order the model reads them: its
/// columns without the ids, the event time and the label.
fn fraud_features() -> Vec<&'static str> {
    greenbelt_control::demo::COLUMNS
        .iter()
        .copied()
        .filter(|c| !["tx_id", "user_id", "merchant_id", "event_ts", "is_fraud"].contains(c))
        .collect()
}

/// The fraud generator's rows as a row-major feature matrix and the labels.
fn fraud_rows(rows: usize, seed: u64, drift: f64) -> (Vec<f64>, Vec<f64>) {
    let text = greenbelt_control::demo::fraud_csv(rows, seed, drift);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at: Vec<usize> = fraud_features()
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    let label = header.iter().position(|h| *h == "is_fraud").unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        x.extend(at.iter().map(|i| f[*i].parse::<f64>().unwrap()));
        y.push(f[label].parse().unwrap());
    }
    (x, y)
}

/// Drift routing with the fraud generator's drift knob: a model trained on
/// `drift = 0` data, calm traffic (`drift = 0`, another seed) and drifted
/// traffic (`drift = 1`). Exactly the rows the rule calls drifted (a
/// feature outside the reference's 0.1%..99.9% range) reach the
/// challenger; the drifted traffic has many such rows and the calm traffic
/// almost none; the counters report both slices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fraud_drift_knob_sends_drifted_rows_to_the_challenger() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    let text = format!(
        "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n\
         [telemetry]\nlog_requests = false\n\
         [repository]\npath = \"{d}/models\"\n\
         [registry]\nurl = \"sqlite://{d}/registry.db\"\nartifacts = \"{d}/artifacts\"\npoll_interval_ms = 50\n\
         [[deployments]]\nname = \"fraud\"\nalias = \"champion\"\n\
         [[deployments.shadow]]\nalias = \"challenger\"\nfraction = 0.0\n\
         [deployments.drift_routing]\nchallenger = \"challenger\"\nlower_quantile = 0.001\nupper_quantile = 0.999\n",
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("greenbelt.toml"), text).unwrap();
    let config = Config::load(Some(&dir.path().join("greenbelt.toml"))).unwrap();

    // Train on calm data; the profile is the training matrix.
    let (x, y) = fraud_rows(3000, 3, 0.0);
    let names: Vec<String> = fraud_features().iter().map(|s| s.to_string()).collect();
    let m = greenbelt_train::logreg::fit(
        &greenbelt_train::DenseMatrix::new(&x, y.len(), fraud_features().len()).unwrap(),
        &y,
        &greenbelt_train::LogRegParams::default(),
    )
    .unwrap();
    let file = dir.path().join("fraud.onnx");
    std::fs::write(&file, greenbelt_train::export_logreg(&m, &names).unwrap()).unwrap();
    let scores: Vec<f64> = y.iter().map(|v| 0.1 + 0.8 * v).collect();
    let profile = ModelProfile::build(
        Task::Classification,
        "input",
        &names,
        &x,
        "probabilities",
        &scores,
        1,
    )
    .unwrap();
    std::fs::write(
        greenbelt_serve::repository::profile_path(&file),
        serde_json::to_vec(&profile).unwrap(),
    )
    .unwrap();
    register_champion_and_challenger(&config, "fraud", &file).await;

    // What the rule says, computed here from the same profile.
    let bounds: Vec<(f64, f64)> = fraud_features()
        .iter()
        .map(|c| match &profile.features.columns[*c] {
            greenbelt_drift::profile::ColumnProfile::Numeric(p) => {
                greenbelt_serve::drift::monitor::ood_range(p, 0.001, 0.999)
            }
            greenbelt_drift::profile::ColumnProfile::Categorical(_) => unreachable!(),
        })
        .collect();
    let drifted = |row: &[f64]| {
        row.iter()
            .zip(&bounds)
            .filter(|(v, (lo, hi))| **v < *lo || **v > *hi)
            .count()
            >= 1
    };

    let running = App::build(config).await.unwrap().spawn();
    let base = format!("http://{}", running.http_addr().unwrap());
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = get_json(&client, &format!("{base}/admin/drift/fraud")).await;
        if v["versions"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served both versions: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let routed = |text: &str, slice: &str, action: &str| {
        sample(
            text,
            &format!(
                "greenbelt_drift_routed_requests_total{{deployment=\"fraud\",slice=\"{slice}\",action=\"{action}\"}}"
            ),
        )
        .unwrap_or(0.0) as usize
    };
    let mut expected = 0;
    let mut shares = Vec::new();
    for (seed, knob) in [(9u64, 0.0), (10, 1.0)] {
        let (x, _) = fraud_rows(300, seed, knob);
        let mut outside = 0;
        for row in x.chunks(fraud_features().len()) {
            outside += usize::from(drifted(row));
            let body = json!({"inputs": [{"name": "input", "shape": [1, fraud_features().len()], "datatype": "FP32", "data": row}]});
            let r = client
                .post(format!("{base}/v2/models/fraud/infer"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        expected += outside;
        shares.push(outside as f64 / 300.0);
        let text = metrics_text(&client, &base).await;
        assert_eq!(
            routed(&text, "drifted", "mirrored"),
            expected,
            "drift = {knob}"
        );
    }
    let text = metrics_text(&client, &base).await;
    assert_eq!(
        routed(&text, "drifted", "mirrored") + routed(&text, "in_distribution", "none"),
        600,
        "both slices are counted"
    );
    // The knob moves the slice: few calm rows, many drifted ones.
    assert!(
        shares[0] < 0.05 && shares[1] > 0.2,
        "drifted shares {shares:?}"
    );
    // The challenger compared exactly the drifted rows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shadow = get_json(&client, &format!("{base}/admin/shadow/fraud")).await;
        let compared = shadow[0]["counters"]["compared"].as_u64().unwrap_or(0) as usize;
        if compared == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "challenger compared {compared} of {expected}: {shadow}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
}

/// Register `file` (its profile beside it) twice under `model`: version 1
/// as `champion`, version 2 as `challenger`.
async fn register_champion_and_challenger(config: &Config, model: &str, file: &Path) {
    let registry = greenbelt_app::registry::open(config, None).await.unwrap();
    for alias in ["champion", "challenger"] {
        let v = greenbelt_app::registry::register_file(
            &registry,
            config,
            model.into(),
            file,
            json!({}),
            json!({}),
            "test".into(),
        )
        .await
        .unwrap();
        assert!(v.lineage["profile"]["uri"].is_string(), "{:?}", v.lineage);
        registry
            .set_alias(model, alias, v.version, "test", "release")
            .await
            .unwrap();
    }
}
