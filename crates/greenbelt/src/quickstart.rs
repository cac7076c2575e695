//! `greenbelt quickstart`: lay out the demo project, materialize its
//! features, train and promote a fraud model through the promotion
//! pipeline, serve it from the registry alias (plus a bundled model from a
//! plain model repository), and send traffic. The steps are
//! `greenbelt_app` calls; this file parses arguments and prints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use greenbelt_app::App;
use greenbelt_app::quickstart::{DemoClient, entity_request, materialize, write_project};
use greenbelt_serve::Config;

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

fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let runtimes = tokio::task::spawn_blocking(|| greenbelt_runtime::Runtimes::probe(None)).await?;
    let gbdt = runtimes.runs_trees();
    println!("quickstart: runtimes: {}", runtimes.describe());
    let (config_path, pipeline) = write_project(&args.dir, &args.http_addr, &args.grpc_addr, gbdt)?;
    println!(
        "quickstart: wrote the demo project to {}/ (20,000 synthetic transactions over the last 60 days, feature definitions with contracts, {} pipeline, model repository, greenbelt.toml)",
        args.dir.display(),
        if gbdt {
            "gradient-boosted trees"
        } else {
            "logistic regression (neither the native engine nor ONNX Runtime: tract cannot run trees)"
        }
    );
    let config = Config::load(Some(&config_path))?;
    let features = args.dir.join("features.toml");
    println!(
        "\nquickstart: materialize the feature views (greenbelt features -f {} materialize ...)",
        features.display()
    );
    materialize(&features, &mut |m| {
        println!(
            "quickstart:   {}: {} rows → {} day partitions, {} quarantined, {} entity keys online ({:.2} s)",
            m.view, m.rows, m.partitions, m.quarantined, m.online_keys, m.seconds
        );
    })
    .await?;

    println!(
        "\nquickstart: train v1 → validate → gate → register → promote (greenbelt pipeline run {})",
        pipeline.display()
    );
    let report = greenbelt_app::pipeline::run_pipeline(
        &pipeline,
        &config,
        Arc::new(|line: &str| eprintln!("{line}")),
    )
    .await?;
    println!("{}", report.text());
    if !report.promoted && report.champion.is_none() {
        bail!("the first model was not promoted; see the gate report above");
    }

    let request_log = config
        .telemetry
        .log_file
        .as_ref()
        .map_or_else(|| "the server log".into(), |p| p.display().to_string());
    let app = App::build(config).await?;
    let Some(http) = app.http_addr() else {
        bail!("server has no REST address");
    };
    let serving = app.spawn();
    let base = format!("http://{http}");
    let demo = DemoClient::new(&base)?;
    let fraud_path = "/v2/models/fraud/infer";
    let fraud_url = demo.url(fraud_path);
    let fraud_body = std::fs::read_to_string(args.dir.join("fraud-request.json"))?;
    let Some(first) = demo
        .first_ok(fraud_path, &fraud_body, Duration::from_secs(10))
        .await
    else {
        serving.stop().await?;
        bail!("fraud@champion did not become servable within 10 s");
    };
    println!(
        "\nquickstart: POST {fraud_url}  → HTTP {}, served by fraud version {}\n{}",
        first.status,
        first.version,
        pretty(&first.body)
    );
    let csv = std::fs::read_to_string(args.dir.join("data/transactions.csv"))?;
    let entity_body = entity_request(&csv, 2);
    std::fs::write(args.dir.join("fraud-entities.json"), &entity_body)?;
    let a = demo.post(fraud_path, &entity_body).await?;
    println!(
        "quickstart: POST {fraud_url} with entity keys (features read from the online store) → HTTP {}, version {}\n{}",
        a.status,
        a.version,
        pretty(&a.body)
    );
    if a.status != 200 {
        serving.stop().await?;
        bail!("the entity-key request failed: {}", a.body);
    }
    let unknown = entity_body.replacen("\"data\":[\"u", "\"data\":[\"x", 1);
    let a = demo.post(fraud_path, &unknown).await?;
    println!(
        "quickstart: the same with an unknown user → HTTP {}: {}",
        a.status, a.body
    );
    let logreg_url = demo.url("/v2/models/logreg/infer");
    let body = std::fs::read_to_string(args.dir.join("request.json"))?;
    let a = demo.post("/v2/models/logreg/infer", &body).await?;
    println!(
        "quickstart: POST {logreg_url}  → HTTP {} (model repository, version {})\n{}",
        a.status,
        a.version,
        pretty(&a.body)
    );

    let started = tokio::time::Instant::now();
    let traffic_body = entity_request(&csv, 8);
    let ok = demo
        .traffic(fraud_path, &[&fraud_body, &traffic_body], args.traffic)
        .await?;
    println!(
        "\nquickstart: sent {} requests to fraud (half with features, half with entity keys): {ok} OK in {:.2} s; one log line each in {}",
        args.traffic,
        started.elapsed().as_secs_f64(),
        request_log
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
    serving.stop().await?;
    Ok(())
}
