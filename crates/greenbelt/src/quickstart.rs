//! `greenbelt quickstart`: lay out a demo project with a bundled model,
//! serve it, and send a first request so the user sees an answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use greenbelt_serve::{Config, Server};

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

#[derive(clap::Args)]
pub struct Args {
    /// Directory for the demo project.
    #[arg(long, default_value = "demo")]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_addr: String,
    #[arg(long, default_value = "127.0.0.1:8001")]
    grpc_addr: String,
    /// Keep serving after the first request (until Ctrl-C).
    #[arg(long)]
    serve: bool,
}

fn write_project(dir: &Path, http_addr: &str, grpc_addr: &str) -> anyhow::Result<PathBuf> {
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
    let config_path = dir.join("greenbelt.toml");
    std::fs::write(
        &config_path,
        format!(
            "# Greenbelt project file. Every setting has a working default.\n\
             [server]\n\
             http_addr = \"{http_addr}\"\n\
             grpc_addr = \"{grpc_addr}\"\n\
             \n\
             [repository]\n\
             path = \"{}\"\n",
            dir.join("models").display()
        ),
    )?;
    let row: Vec<String> = SAMPLE_ROW.iter().map(|x| x.to_string()).collect();
    let request = format!(
        "{{\"inputs\":[{{\"name\":\"input\",\"shape\":[1,20],\"datatype\":\"FP32\",\"data\":[{}]}}]}}\n",
        row.join(",")
    );
    std::fs::write(dir.join("request.json"), request)?;
    Ok(config_path)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config_path = write_project(&args.dir, &args.http_addr, &args.grpc_addr)?;
    println!(
        "quickstart: wrote demo project to {}/ (model repository, greenbelt.toml, request.json)",
        args.dir.display()
    );
    let config = Config::load(Some(&config_path))?;
    let server = Server::build(config).await.context("starting the server")?;
    let Some(http) = server.http_addr() else {
        bail!("server has no REST address");
    };
    println!(
        "quickstart: runtimes: {}",
        server.state.repository.runtimes().describe()
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{http}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let body = std::fs::read_to_string(args.dir.join("request.json"))?;
    let url = format!("{base}/v2/models/logreg/infer");
    println!("quickstart: POST {url}");
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .context("sending the first request")?;
    let status = resp.status();
    let version = resp
        .headers()
        .get("x-greenbelt-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(text);
    println!("quickstart: HTTP {status} (served by version {version})\n{pretty}");
    if !status.is_success() {
        let _ = stop_tx.send(());
        let _ = serving.await;
        bail!("the first request failed");
    }
    println!(
        "\nquickstart: try it yourself:\n  curl -s -X POST {url} -H 'content-type: application/json' -d @{}/request.json\n  curl -s {base}/metrics | grep greenbelt_requests_total",
        args.dir.display()
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
    Ok(())
}
