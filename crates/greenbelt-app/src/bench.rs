//! `bench`: closed-loop load (N connections) or open-loop load (a fixed
//! arrival rate, `rate`) against any V2 server for a fixed time, with
//! throughput (goodput: successful requests per second), latency
//! percentiles of successful requests, shed requests and errors, and, when the server is
//! Greenbelt, its own time per request (server time minus model compute)
//! read from `/metrics` before and after the measured part.

use std::time::Duration;

use serde::Serialize;

use crate::error::{AppError, Result};
use crate::loadgen::{self, LoadOptions, OpenOptions, Protocol, Stop, Target};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub target: Target,
    pub connections: usize,
    /// Measured load, after `warmup`.
    pub duration: Duration,
    pub warmup: Duration,
    /// Rows per request (of the generated inputs; see `requests`).
    pub rows: usize,
    /// The requests to send in turn (from `--input-file`) instead of
    /// inputs generated from the model's metadata.
    pub requests: Option<Vec<Vec<greenbelt_core::Tensor>>>,
    /// Open loop: requests per second regardless of answers, with at most
    /// `connections` outstanding. None: closed loop.
    pub rate: Option<f64>,
    /// What the run is (for `greenbelt cost compare`), e.g. "onnxruntime".
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The benchmark's result (the `--json` shape of `greenbelt bench`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    pub protocol: Protocol,
    pub model: String,
    pub concurrency: usize,
    pub rows: usize,
    pub duration_s: f64,
    /// Open loop: the offered arrival rate (requests per second).
    pub rate_rps: Option<f64>,
    /// Successful requests.
    pub requests: u64,
    /// Failed requests (shed ones included).
    pub errors: u64,
    /// Of the errors, requests the server shed (503 / UNAVAILABLE).
    pub shed: u64,
    /// Open loop: requests due while `concurrency` were outstanding, not sent.
    pub dropped_by_client: u64,
    /// Successful requests per second (goodput).
    pub throughput_rps: f64,
    pub latency_ms: Latency,
    pub server_us_per_request: Option<f64>,
    pub compute_us_per_request: Option<f64>,
    pub overhead_us_per_request: Option<f64>,
    pub first_error: Option<String>,
    /// What the run is, as given with `--label`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What the measured part cost on a Greenbelt server: its cost ledger
    /// before and after, for the benchmarked model and the whole process
    /// (read by `greenbelt cost compare`).
    pub cost: Option<greenbelt_core::cost::RunCost>,
}

impl BenchReport {
    /// The report as text for people.
    pub fn text(&self) -> String {
        let mode = match self.rate_rps {
            Some(r) => format!("rate={r:.0}/s outstanding<={}", self.concurrency),
            None => format!("c={}", self.concurrency),
        };
        let mut out = format!(
            "{} {mode} rows={}: {:.0} req/s ok, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} ok, {} errors ({} shed), {} dropped by client\n",
            match self.protocol {
                Protocol::Rest => "rest",
                Protocol::Grpc => "grpc",
            },
            self.rows,
            self.throughput_rps,
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.requests,
            self.errors,
            self.shed,
            self.dropped_by_client
        );
        if let (Some(r), Some(c), Some(o)) = (
            self.server_us_per_request,
            self.compute_us_per_request,
            self.overhead_us_per_request,
        ) {
            out.push_str(&format!(
                "server: {r:.1} µs/request, of which model compute {c:.1} µs, overhead {o:.1} µs\n"
            ));
        }
        if let Some(c) = &self.cost
            && c.usage.predictions > 0
        {
            let per = |d: f64| d / c.usage.predictions as f64 * 1e6;
            let lines = c.lines(&c.prices);
            let total: f64 = lines.iter().map(|l| l.1).sum();
            out.push_str(&format!(
                "cost: ${} per 1M predictions (process CPU {:.2} s, of it compute {:.2} s; prices: {})\n",
                crate::cost::money(per(total)),
                c.process.cpu_seconds,
                c.usage.compute_cpu_seconds,
                c.prices.source
            ));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("first error: {e}\n"));
        }
        out
    }
}

/// Rows per request of a request list: the first dimension of the first
/// request's first input (1 for a scalar).
fn request_rows(requests: &[Vec<greenbelt_core::Tensor>]) -> usize {
    requests
        .first()
        .and_then(|r| r.first())
        .and_then(|t| t.shape.first())
        .and_then(|d| usize::try_from(*d).ok())
        .unwrap_or(1)
}

/// Run the benchmark.
pub async fn bench(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.connections == 0 || opts.rows == 0 || opts.duration.is_zero() {
        return Err(AppError::Invalid(
            "--concurrency, --rows and --duration must be positive".into(),
        ));
    }
    let base = opts.target.rest_url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let specs = loadgen::model_inputs(&http, &base, &opts.target.model).await?;
    let (requests, rows) = match &opts.requests {
        Some(list) => (list.clone(), request_rows(list)),
        None => (
            vec![
                specs
                    .iter()
                    .map(|s| loadgen::make_input(s, opts.rows))
                    .collect::<Result<Vec<_>>>()?,
            ],
            opts.rows,
        ),
    };
    let greenbelt = loadgen::scrape(&http, &base).await.is_some();
    let target = opts.target.clone();
    let load = match opts.rate {
        None => {
            let load_opts = LoadOptions {
                connections: opts.connections,
                warmup: opts.warmup,
                stop: Stop::After(opts.duration),
                keep_samples: false,
            };
            tokio::spawn(async move { loadgen::run(&target, &requests, load_opts).await })
        }
        Some(rate) => {
            let open = OpenOptions {
                rate,
                max_outstanding: opts.connections,
                warmup: opts.warmup,
                duration: opts.duration,
                stop: None,
                keep_samples: false,
            };
            tokio::spawn(async move { loadgen::run_open(&target, &requests, open).await })
        }
    };
    tokio::time::sleep(opts.warmup).await;
    let (before, cost_before) = if greenbelt {
        (
            loadgen::scrape(&http, &base).await,
            crate::cost::snapshot(&http, &base).await,
        )
    } else {
        (None, None)
    };
    let result = load.await??;
    let after = loadgen::scrape(&http, &base).await;
    let cost = match (cost_before, crate::cost::snapshot(&http, &base).await) {
        (Some(b), Some(a)) => Some(greenbelt_core::cost::RunCost::of(
            &a.minus(&b),
            &opts.target.model,
        )),
        _ => None,
    };
    let per_request = match (&before, &after) {
        (Some(b), Some(a)) => loadgen::server_time_per_request(b, a, &opts.target.model),
        _ => None,
    };
    let secs = opts.duration.as_secs_f64();
    let s = result.summary(secs);
    Ok(BenchReport {
        protocol: opts.target.protocol,
        model: opts.target.model.clone(),
        concurrency: opts.connections,
        rows,
        duration_s: secs,
        rate_rps: opts.rate,
        requests: s.requests,
        errors: s.errors,
        shed: result.shed,
        dropped_by_client: result.dropped,
        throughput_rps: s.throughput_rps,
        latency_ms: Latency {
            p50: s.p50_ms,
            p90: s.p90_ms,
            p99: s.p99_ms,
            max: s.max_ms,
        },
        server_us_per_request: per_request.map(|(r, _)| r),
        compute_us_per_request: per_request.map(|(_, c)| c),
        overhead_us_per_request: per_request.map(|(r, c)| r - c),
        first_error: result.first_error,
        label: opts.label.clone(),
        cost,
    })
}
