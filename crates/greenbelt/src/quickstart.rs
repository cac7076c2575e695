//! `greenbelt quickstart`: lay out a demo project, train and promote a fraud
//! model through the promotion pipeline, serve it from the registry alias
//! (plus a bundled model from a plain model repository), and send traffic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use greenbelt_serve::Config;

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

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the demo project.
    #[arg(long, default_value = "demo")]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_addr: String,
    #[arg(long, default_value = "127.0.0.1:8001")]
    grpc_addr: String,
    /// Requests of demo traffic to send after the first answer.
    #[arg(long, default_value_t = 500)]
    traffic: usize,
    /// Keep serving after the demo (until Ctrl-C).
    #[arg(long)]
    serve: bool,
}

fn write_project(
    dir: &Path,
    http_addr: &str,
    grpc_addr: &str,
    gbdt: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let model_dir = dir.join("models/logreg");
    std::fs::create_dir_all(model_dir.join("1"))
        .with_context(|| format!("creating {}", model_dir.display()))?;
    std::fs::write(model_dir.join("1/model.onnx"), LOGREG_ONNX)?;
    std::fs::write(
        model_dir.join("config.toml"),
        "# Per-model settings; every key is optional.\n\
         backend = \"auto\"            # auto | onnxruntime | tract\n\
         version_policy = { latest = 1 }\n\
         \n\
         # Dynamic batching (off when this table is absent):\n\
         # [batching]\n\
         # max_batch_size = 32\n\
         # max_queue_delay_us = 500\n",
    )?;
    std::fs::create_dir_all(dir.join("data"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = now.saturating_sub(60 * 86_400 + DATA_END_MARGIN_S);
    let csv = greenbelt_control::demo::fraud_csv_from(DEMO_ROWS, 7, 0.0, start);
    std::fs::write(dir.join("data/labels.csv"), labels(&csv))?;
    std::fs::write(dir.join("data/transactions.csv"), csv)?;
    std::fs::write(dir.join("features.toml"), FEATURES)?;
    // Remove what an earlier quickstart in this directory materialized.
    for old in ["data/offline", "data/online.redb"] {
        let p = dir.join(old);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let pipeline = dir.join("pipeline.toml");
    let text = if gbdt {
        PIPELINE_FEATURES.to_string()
    } else {
        // No ONNX Runtime: tract cannot run trees; train a logistic regression.
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
    std::fs::write(&pipeline, text)?;
    let config_path = dir.join("greenbelt.toml");
    let d = dir.display();
    std::fs::write(
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
    std::fs::write(
        dir.join("request.json"),
        format!(
            "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,20],\"datatype\":\"FP32\",\"data\":[{}]}}]}}\n",
            row.join(",")
        ),
    )?;
    // One transaction's features, in the feature service's order
    // (user_profile: tx count 24h, avg amount 30d, device age; merchant risk;
    // user_last_tx: amount, distance, foreign).
    std::fs::write(
        dir.join("fraud-request.json"),
        "{\"inputs\":[{\"name\":\"input\",\"shape\":[1,7],\"datatype\":\"FP32\",\"data\":[6,120.0,12,0.91,480.5,250.0,1]}]}\n",
    )?;
    Ok((config_path, pipeline))
}

/// The entity rows the pipeline trains on: keys, event time and label of
/// every transaction (the features come from the store, as of that time).
fn labels(csv: &str) -> String {
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
fn entity_request(csv: &str, n: usize) -> String {
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

/// Materialize every view of the demo's feature store over its whole data
/// range, offline (Parquet) and online (the embedded store).
async fn materialize(features: &Path) -> anyhow::Result<()> {
    use greenbelt_features::offline::{MaterializeOptions, OfflineStore};
    let defs = std::sync::Arc::new(greenbelt_features::Definitions::load(features)?);
    let store = OfflineStore::open(&defs.offline_path)?;
    let online = greenbelt_features::online::OnlineStore::open(&defs.online_url).await?;
    let svc = greenbelt_features::online::service::OnlineService::new(
        defs.clone(),
        online,
        greenbelt_features::online::service::CacheOptions::default(),
    );
    let now = greenbelt_features::time::now_us();
    let (start, end) = (now - 62 * 86_400_000_000, now + 60_000_000);
    let opts = MaterializeOptions::default();
    for view in defs.views.keys() {
        let t = tokio::time::Instant::now();
        let r = greenbelt_features::offline::materialize(&defs, &store, view, start, end, &opts)
            .await
            .with_context(|| format!("materializing feature view \"{view}\""))?;
        let keys = svc
            .materialize_online(&store, view, start, end, &opts.engine)
            .await
            .with_context(|| format!("loading feature view \"{view}\" online"))?;
        println!(
            "quickstart:   {view}: {} rows → {} day partitions, {} quarantined, {keys} entity keys online ({:.2} s)",
            r.rows,
            r.partitions_written.len(),
            r.quarantined,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-greenbelt-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, version, resp.text().await?))
}

fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let runtimes = tokio::task::spawn_blocking(|| greenbelt_runtime::Runtimes::probe(None)).await?;
    let gbdt = runtimes.onnxruntime.is_some();
    println!("quickstart: runtimes: {}", runtimes.describe());
    let (config_path, pipeline) = write_project(&args.dir, &args.http_addr, &args.grpc_addr, gbdt)?;
    println!(
        "quickstart: wrote the demo project to {}/ (20,000 synthetic transactions over the last 60 days, feature definitions with contracts, {} pipeline, model repository, greenbelt.toml)",
        args.dir.display(),
        if gbdt {
            "gradient-boosted trees"
        } else {
            "logistic regression (no ONNX Runtime: tract cannot run trees)"
        }
    );
    let config = Config::load(Some(&config_path))?;
    let features = args.dir.join("features.toml");
    println!(
        "\nquickstart: materialize the feature views (greenbelt features -f {} materialize ...)",
        features.display()
    );
    materialize(&features).await?;

    println!(
        "\nquickstart: train v1 → validate → gate → register → promote (greenbelt pipeline run {})",
        pipeline.display()
    );
    let report = crate::pipeline_cmd::run_pipeline(&pipeline, &config, false).await?;
    println!("{}", report.text());
    if !report.promoted && report.champion.is_none() {
        bail!("the first model was not promoted; see the gate report above");
    }

    let (server, watchers) = crate::build_server(&config).await?;
    let Some(http) = server.http_addr() else {
        bail!("server has no REST address");
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{http}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    // Wait (bounded) until the route has loaded fraud@champion.
    let fraud_body = std::fs::read_to_string(args.dir.join("fraud-request.json"))?;
    let fraud_url = format!("{base}/v2/models/fraud/infer");
    let mut first = None;
    for _ in 0..100 {
        if let Ok(r @ (200, _, _)) = post(&client, &fraud_url, &fraud_body).await {
            first = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((status, version, text)) = first else {
        let _ = stop_tx.send(());
        bail!("fraud@champion did not become servable within 10 s");
    };
    println!(
        "\nquickstart: POST {fraud_url}  → HTTP {status}, served by fraud version {version}\n{}",
        pretty(&text)
    );
    let csv = std::fs::read_to_string(args.dir.join("data/transactions.csv"))?;
    let entity_body = entity_request(&csv, 2);
    std::fs::write(args.dir.join("fraud-entities.json"), &entity_body)?;
    let (status, version, text) = post(&client, &fraud_url, &entity_body).await?;
    println!(
        "quickstart: POST {fraud_url} with entity keys (features read from the online store) → HTTP {status}, version {version}\n{}",
        pretty(&text)
    );
    if status != 200 {
        let _ = stop_tx.send(());
        bail!("the entity-key request failed: {text}");
    }
    let unknown = entity_body.replacen("\"data\":[\"u", "\"data\":[\"x", 1);
    let (status, _, text) = post(&client, &fraud_url, &unknown).await?;
    println!("quickstart: the same with an unknown user → HTTP {status}: {text}");
    let logreg_url = format!("{base}/v2/models/logreg/infer");
    let body = std::fs::read_to_string(args.dir.join("request.json"))?;
    let (status, version, text) = post(&client, &logreg_url, &body).await?;
    println!(
        "quickstart: POST {logreg_url}  → HTTP {status} (model repository, version {version})\n{}",
        pretty(&text)
    );

    let started = tokio::time::Instant::now();
    let mut ok = 0;
    let traffic_body = entity_request(&csv, 8);
    for i in 0..args.traffic {
        let body = if i % 2 == 0 {
            &fraud_body
        } else {
            &traffic_body
        };
        if post(&client, &fraud_url, body).await?.0 == 200 {
            ok += 1;
        }
    }
    println!(
        "\nquickstart: sent {} requests to fraud (half with features, half with entity keys): {ok} OK in {:.2} s",
        args.traffic,
        started.elapsed().as_secs_f64()
    );
    println!(
        "\nquickstart: try it yourself:\n  curl -s -X POST {fraud_url} -d @{d}/fraud-request.json\n  curl -s -X POST {fraud_url} -d @{d}/fraud-entities.json      # entity keys; features from the store\n  curl -s -X POST {base}/features/online -d '{{\"entities\":{{\"user_id\":[\"u00001\"]}},\"features\":[\"user_profile:*\"]}}'\n  curl -s {base}/metrics | grep greenbelt_requests_total\n  greenbelt registry --config {c} history fraud\n  greenbelt pipeline run --config {c} {p}     # train v2; promoted only if it beats v1",
        d = args.dir.display(),
        c = config_path.display(),
        p = pipeline.display()
    );
    if args.serve {
        println!(
            "quickstart: serving on {base} (REST) and {} (gRPC); Ctrl-C to stop",
            args.grpc_addr
        );
        let _ = tokio::signal::ctrl_c().await;
    } else {
        println!(
            "quickstart: stopping. To serve the demo: greenbelt serve --config {}",
            config_path.display()
        );
    }
    let _ = stop_tx.send(());
    serving.await??;
    for w in watchers {
        w.abort();
    }
    Ok(())
}
