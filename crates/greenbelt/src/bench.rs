//! `greenbelt bench`: a closed-loop load generator for any V2 server (REST or
//! gRPC). N workers send requests back to back for a fixed time; the report
//! gives throughput, latency percentiles and errors, and, when the server is
//! Greenbelt, its own per-request overhead (server time minus model compute)
//! read from `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use greenbelt_core::{DataType, Tensor, TensorData, raw};
use greenbelt_serve::grpc::pb;
use hdrhistogram::Histogram;
use tokio::time::Instant;

#[derive(Clone, Copy, clap::ValueEnum, PartialEq)]
pub enum Proto {
    Rest,
    Grpc,
}

#[derive(clap::Args)]
pub struct Args {
    /// REST base URL of the server (also used for metadata and /metrics).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// gRPC address, for --protocol grpc.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    grpc_url: String,
    #[arg(long, value_enum, default_value_t = Proto::Rest)]
    protocol: Proto,
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct Spec {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
}

async fn metadata(client: &reqwest::Client, base: &str, model: &str) -> anyhow::Result<Vec<Spec>> {
    let v: serde_json::Value = client
        .get(format!("{base}/v2/models/{model}"))
        .send()
        .await
        .context("fetching model metadata")?
        .error_for_status()?
        .json()
        .await?;
    let inputs = v["inputs"].as_array().context("metadata has no inputs")?;
    inputs
        .iter()
        .map(|i| {
            Ok(Spec {
                name: i["name"].as_str().context("input name")?.to_string(),
                datatype: i["datatype"].as_str().context("input datatype")?.parse()?,
                shape: i["shape"]
                    .as_array()
                    .context("input shape")?
                    .iter()
                    .map(|d| d.as_i64().unwrap_or(1))
                    .collect(),
            })
        })
        .collect()
}

/// A deterministic input tensor for `spec` with `rows` rows.
fn make_input(spec: &Spec, rows: usize) -> anyhow::Result<Tensor> {
    let mut shape = spec.shape.clone();
    for (i, d) in shape.iter_mut().enumerate() {
        if *d < 0 {
            *d = if i == 0 { rows as i64 } else { 1 };
        }
    }
    let n: usize = shape.iter().map(|d| *d as usize).product();
    let f = |i: usize| ((i * 7919) % 1000) as f64 / 250.0 - 2.0;
    let data = match spec.datatype {
        DataType::Fp32 => TensorData::Fp32((0..n).map(|i| f(i) as f32).collect()),
        DataType::Fp64 => TensorData::Fp64((0..n).map(f).collect()),
        DataType::Int64 => TensorData::Int64((0..n).map(|i| (i % 10) as i64).collect()),
        DataType::Int32 => TensorData::Int32((0..n).map(|i| (i % 10) as i32).collect()),
        other => bail!(
            "bench generates FP32, FP64, INT32 and INT64 inputs; \"{}\" is {other}",
            spec.name
        ),
    };
    Ok(Tensor::new(spec.name.clone(), shape, data)?)
}

fn rest_body(inputs: &[Tensor]) -> anyhow::Result<String> {
    let list: Vec<serde_json::Value> = inputs
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "shape": t.shape,
                "datatype": t.datatype().as_str(),
                "data": serde_json::to_value(greenbelt_core::json::JsonData(&t.data)).unwrap_or_default(),
            })
        })
        .collect();
    Ok(serde_json::to_string(
        &serde_json::json!({ "inputs": list }),
    )?)
}

fn grpc_request(model: &str, inputs: &[Tensor]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.to_string(),
        inputs: inputs
            .iter()
            .map(|t| pb::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape.clone(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|t| raw::encode(&t.data).into()).collect(),
        ..Default::default()
    }
}

/// Sum and count of a Greenbelt histogram for `model` from /metrics text.
fn histogram_sum_count(text: &str, metric: &str, model: &str) -> (f64, f64) {
    let label = format!("model=\"{model}\"");
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with(&format!("{metric}_sum{{")) && line.contains(&label) {
            sum += value();
        } else if line.starts_with(&format!("{metric}_count{{")) && line.contains(&label) {
            count += value();
        }
    }
    (sum, count)
}

async fn scrape(client: &reqwest::Client, base: &str) -> Option<String> {
    let resp = client.get(format!("{base}/metrics")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    text.contains("greenbelt_request_duration_seconds")
        .then_some(text)
}

struct WorkerResult {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    non_2xx_sample: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.rows == 0 || args.duration <= 0.0 {
        bail!("--concurrency, --rows and --duration must be positive");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let specs = metadata(&http, &args.url, &args.model).await?;
    let inputs: Vec<Tensor> = specs
        .iter()
        .map(|s| make_input(s, args.rows))
        .collect::<anyhow::Result<_>>()?;
    let body = Arc::new(rest_body(&inputs)?);
    let grpc_req = Arc::new(grpc_request(&args.model, &inputs));
    // One HTTP/2 connection per worker, like wrk's one connection per client.
    let mut grpc_channels = Vec::new();
    if args.protocol == Proto::Grpc {
        for _ in 0..args.concurrency {
            grpc_channels.push(
                tonic::transport::Endpoint::from_shared(args.grpc_url.clone())?
                    .connect()
                    .await
                    .context("connecting to the gRPC endpoint")?,
            );
        }
    }
    let url = Arc::new(format!("{}/v2/models/{}/infer", args.url, args.model));
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(args.duration);
    let before = scrape(&http, &args.url).await;
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + measure;
    let mut workers = Vec::new();
    let mut scraped_before_measure = None;
    let empty = Histogram::<u64>::new(3)?;
    for w in 0..args.concurrency {
        let http = http.clone();
        let url = url.clone();
        let body = body.clone();
        let grpc_req = grpc_req.clone();
        let empty = empty.clone();
        let mut grpc = grpc_channels.get(w).cloned().map(|ch| {
            pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(ch)
                .max_decoding_message_size(usize::MAX)
        });
        workers.push(tokio::spawn(async move {
            let mut r = WorkerResult {
                hist: empty.clone(),
                ok: 0,
                errors: 0,
                non_2xx_sample: None,
            };
            loop {
                let t0 = Instant::now();
                if t0 >= stop_at {
                    break;
                }
                let outcome: Result<(), String> = match &mut grpc {
                    Some(client) => client
                        .model_infer((*grpc_req).clone())
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                    None => match http
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .body(body.as_str().to_string())
                        .send()
                        .await
                    {
                        Ok(resp) if resp.status().is_success() => {
                            resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                        }
                        Ok(resp) => Err(format!(
                            "HTTP {}: {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default()
                        )),
                        Err(e) => Err(e.to_string()),
                    },
                };
                let took = t0.elapsed();
                if t0 < measure_from {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        r.ok += 1;
                        let _ = r.hist.record(took.as_nanos() as u64);
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.non_2xx_sample.get_or_insert(e);
                    }
                }
            }
            r
        }));
    }
    tokio::time::sleep_until(measure_from).await;
    if before.is_some() {
        scraped_before_measure = scrape(&http, &args.url).await;
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut ok, mut errors, mut sample) = (0u64, 0u64, None);
    for w in workers {
        let r = w.await?;
        hist.add(&r.hist)?;
        ok += r.ok;
        errors += r.errors;
        if sample.is_none() {
            sample = r.non_2xx_sample;
        }
    }
    let after = scrape(&http, &args.url).await;
    let overhead_us = match (&scraped_before_measure, &after) {
        (Some(b), Some(a)) => {
            let (rs0, rc0) =
                histogram_sum_count(b, "greenbelt_request_duration_seconds", &args.model);
            let (rs1, rc1) =
                histogram_sum_count(a, "greenbelt_request_duration_seconds", &args.model);
            let (cs0, _) =
                histogram_sum_count(b, "greenbelt_compute_duration_seconds", &args.model);
            let (cs1, _) =
                histogram_sum_count(a, "greenbelt_compute_duration_seconds", &args.model);
            let n = rc1 - rc0;
            (n > 0.0).then(|| ((rs1 - rs0) / n * 1e6, (cs1 - cs0) / n * 1e6))
        }
        _ => None,
    };
    let secs = measure.as_secs_f64();
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1e6;
    let report = serde_json::json!({
        "protocol": match args.protocol { Proto::Rest => "rest", Proto::Grpc => "grpc" },
        "model": args.model,
        "concurrency": args.concurrency,
        "rows": args.rows,
        "duration_s": secs,
        "requests": ok,
        "errors": errors,
        "throughput_rps": ok as f64 / secs,
        "latency_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": hist.max() as f64 / 1e6 },
        "server_us_per_request": overhead_us.map(|(r, _)| r),
        "compute_us_per_request": overhead_us.map(|(_, c)| c),
        "overhead_us_per_request": overhead_us.map(|(r, c)| r - c),
        "first_error": sample,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} c={} rows={}: {:.0} req/s, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} ok, {} errors",
            report["protocol"].as_str().unwrap_or(""),
            args.concurrency,
            args.rows,
            ok as f64 / secs,
            q(0.5),
            q(0.9),
            q(0.99),
            hist.max() as f64 / 1e6,
            ok,
            errors
        );
        if let Some((r, c)) = overhead_us {
            println!(
                "server: {r:.1} µs/request, of which model compute {c:.1} µs, overhead {:.1} µs",
                r - c
            );
        }
        if let Some(e) = &sample {
            println!("first error: {e}");
        }
    }
    if errors > 0 && ok == 0 {
        bail!("every request failed");
    }
    Ok(())
}
