//! What shadowing costs the primary: a real server (REST, ONNX Runtime or
//! tract, the logreg fixture) with deployment `fraud` = v1 stable and v2 as
//! a shadow, driven by in-process HTTP clients. Rounds alternate between 0%
//! and 50% mirroring (and 100%) so host noise hits every setting alike; the
//! report gives primary p50/p99 and throughput per setting and the p99
//! overhead against 0%.
//!
//! ```sh
//! cargo build --release -p greenbelt-serve --example shadow_overhead
//! target/release/examples/shadow_overhead [requests-per-round] [clients] [rounds]
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_serve::routing::{Routing, ShadowRoute};
use greenbelt_serve::{Config, Server};
use hdrhistogram::Histogram;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn body() -> serde_json::Value {
    let row: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin()).collect();
    serde_json::json!({"inputs": [{"name": "input", "shape": [1, 20], "datatype": "FP32", "data": row}]})
}

async fn round(url: &str, requests: usize, clients: usize) -> Result<(Histogram<u64>, f64), Error> {
    let client = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    let per = requests / clients.max(1);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let b = body();
            for _ in 0..per {
                let t = tokio::time::Instant::now();
                let r = client.post(&url).json(&b).send().await?;
                if !r.status().is_success() {
                    return Err::<_, Error>(format!("HTTP {}", r.status()).into());
                }
                let _ = r.bytes().await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            Ok(h)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let rps = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((all, rps))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8);
    let rounds: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/logreg");
    let text = "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"\"\n[telemetry]\nlog_requests = false\n[repository]\nload_on_startup = false\n";
    let config = Config::from_toml_str(text, Path::new("bench.toml"), std::iter::empty())?;
    let server = Server::build(config).await?;
    let url = format!(
        "http://{}/v2/models/fraud/infer",
        server.http_addr().ok_or("no address")?
    );
    let state = server.state.clone();
    let mut versions = BTreeMap::new();
    for v in [1u64, 2] {
        let served = state.repository.load_file(
            "fraud",
            v,
            &fixtures.join(format!("{v}/model.onnx")),
            &Default::default(),
        )?;
        served.warm()?;
        versions.insert(v, Arc::new(served));
    }
    let install = |fraction_bp: u32| {
        state.repository.install_deployment(
            "fraud",
            Default::default(),
            versions.clone(),
            Routing {
                shadows: vec![ShadowRoute {
                    version: 2,
                    fraction_bp,
                }],
                ..Routing::stable_only(1)
            },
        );
    };
    tokio::spawn(server.run(std::future::pending::<()>()));
    install(0);
    round(&url, 2_000, clients).await?; // warm-up
    let settings = [0u32, 5_000, 10_000];
    let mut results: BTreeMap<u32, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for _ in 0..rounds {
        for bp in settings {
            install(bp);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (h, rps) = round(&url, requests, clients).await?;
            results.entry(bp).or_default().push((
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                rps,
            ));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    let base_p99 = median(results[&0].iter().map(|r| r.1).collect());
    println!("clients={clients} requests/round={requests} rounds={rounds} (median of rounds)");
    println!("| mirrored | p50 ms | p99 ms | req/s | p99 overhead |");
    println!("|---|---|---|---|---|");
    for (bp, rs) in &results {
        let p50 = median(rs.iter().map(|r| r.0).collect());
        let p99 = median(rs.iter().map(|r| r.1).collect());
        let rps = median(rs.iter().map(|r| r.2).collect());
        println!(
            "| {}% | {p50:.3} | {p99:.3} | {rps:.0} | {:+.1}% |",
            bp / 100,
            (p99 / base_p99 - 1.0) * 100.0
        );
    }
    for r in state.shadows.reports("fraud") {
        println!(
            "shadow v{}: compared {}, dropped {} (queue full), errors {}, agreement {:.4}, shadow mean latency {:.3} ms",
            r.version,
            r.counters.compared,
            r.counters.dropped,
            r.counters.errors,
            r.agreement,
            r.latency.shadow_mean_ms
        );
    }
    Ok(())
}
