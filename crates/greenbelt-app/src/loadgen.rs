//! The one load generator, REST or gRPC, against any Open Inference
//! Protocol V2 server. Closed loop ([`run`]): N connections (one client
//! each); each worker sends its next request when the last one answered.
//! Open loop ([`run_open`]): requests leave at a fixed arrival rate whether
//! or not earlier ones answered, at most `max_outstanding` at once; one due
//! while that many are outstanding is not sent and counted as dropped by
//! the client (so an overloaded server cannot slow the offered load down,
//! and the generator's memory stays bounded). `greenbelt bench`
//! measures throughput and latency with it; the bad-deployment drill
//! keeps it running while a rollout is judged and reads every request's
//! outcome and serving version back.
//!
//! Latencies go into an HDR histogram (nanoseconds, successful requests
//! only); [`Summary`] turns a run into the numbers a report prints.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use greenbelt_core::{DataType, Tensor, TensorData, raw};
use greenbelt_serve::grpc::pb;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{AppError, Result};

/// Which transport the load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rest,
    Grpc,
}

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// REST base URL, e.g. `http://127.0.0.1:8000` (also used for metadata).
    pub rest_url: String,
    /// gRPC endpoint, e.g. `http://127.0.0.1:8001` (for [`Protocol::Grpc`]).
    pub grpc_url: String,
    pub protocol: Protocol,
    /// Model (or deployment) name.
    pub model: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// When the measured load ends.
#[derive(Debug, Clone)]
pub enum Stop {
    /// After this long of measured load (the warm-up comes first).
    After(Duration),
    /// When the value turns `true`.
    Signal(watch::Receiver<bool>),
}

/// How to run the load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent connections, each with one request in flight.
    pub connections: usize,
    /// Load before measuring starts (not counted).
    pub warmup: Duration,
    pub stop: Stop,
    /// Keep one [`Sample`] per measured request (the drill reads them).
    pub keep_samples: bool,
}

/// One measured request as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Wall clock (ms since the epoch) when it was sent.
    pub sent_ms: i64,
    pub latency: Duration,
    pub ok: bool,
    /// The version that answered (`x-greenbelt-model-version`, or the
    /// gRPC response's `model_version`).
    pub version: Option<i64>,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Latency of successful requests, in nanoseconds.
    pub hist: Histogram<u64>,
    pub ok: u64,
    /// Failed requests, shed ones included.
    pub errors: u64,
    /// Of the errors, those the server shed (HTTP 503, gRPC UNAVAILABLE).
    pub shed: u64,
    /// Open loop: requests due while `max_outstanding` were outstanding,
    /// never sent.
    pub dropped: u64,
    pub first_error: Option<String>,
    /// How long the measured part lasted.
    pub measured: Duration,
    /// Per-request samples, when asked for.
    pub samples: Vec<Sample>,
}

/// Throughput and latency percentiles of a run, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LoadResult {
    fn empty() -> Result<LoadResult> {
        Ok(LoadResult {
            hist: new_histogram()?,
            ok: 0,
            errors: 0,
            shed: 0,
            dropped: 0,
            first_error: None,
            measured: Duration::ZERO,
            samples: Vec::new(),
        })
    }

    /// Add another worker's result (the measured time is the longest).
    pub fn merge(&mut self, other: LoadResult) -> Result<()> {
        self.hist
            .add(&other.hist)
            .map_err(|e| AppError::Invalid(format!("merging latency histograms: {e}")))?;
        self.ok += other.ok;
        self.errors += other.errors;
        self.shed += other.shed;
        self.dropped += other.dropped;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.measured = self.measured.max(other.measured);
        self.samples.extend(other.samples);
        Ok(())
    }

    fn record(&mut self, sample: Sample, error: Option<Failed>, keep: bool) {
        if let Some(f) = &error
            && f.shed
        {
            self.shed += 1;
        }
        let error = error.map(|f| f.message);
        if sample.ok {
            self.ok += 1;
            let _ = self
                .hist
                .record(u64::try_from(sample.latency.as_nanos()).unwrap_or(u64::MAX));
        } else {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = error;
            }
        }
        if keep {
            self.samples.push(sample);
        }
    }

    /// Throughput over `secs` of measured load and the latency percentiles.
    pub fn summary(&self, secs: f64) -> Summary {
        let ms = |ns: u64| ns as f64 / 1e6;
        let q = |p: f64| {
            if self.hist.is_empty() {
                0.0
            } else {
                ms(self.hist.value_at_quantile(p))
            }
        };
        Summary {
            requests: self.ok,
            errors: self.errors,
            throughput_rps: if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            max_ms: ms(self.hist.max()),
        }
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::<u64>::new(3).map_err(|e| AppError::Invalid(format!("latency histogram: {e}")))
}

/// A model input as its metadata describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// The inputs of `model` from `GET {base}/v2/models/{model}`.
pub async fn model_inputs(
    client: &reqwest::Client,
    base: &str,
    model: &str,
) -> Result<Vec<InputSpec>> {
    let url = format!("{base}/v2/models/{model}");
    let resp = client.get(&url).send().await.map_err(|e| {
        AppError::Remote(format!("GET {url}: {e}; is the server at {base} running?"))
    })?;
    if !resp.status().is_success() {
        return Err(AppError::Remote(format!(
            "GET {url}: HTTP {}; is \"{model}\" served at {base}?",
            resp.status()
        )));
    }
    let v: serde_json::Value = resp.json().await?;
    parse_inputs(&v)
}

/// The `inputs` of V2 model metadata.
pub fn parse_inputs(meta: &serde_json::Value) -> Result<Vec<InputSpec>> {
    let bad = |what: &str| AppError::Remote(format!("model metadata: {what}"));
    let inputs = meta["inputs"].as_array().ok_or_else(|| bad("no inputs"))?;
    inputs
        .iter()
        .map(|i| {
            let name = i["name"]
                .as_str()
                .ok_or_else(|| bad("an input has no name"))?;
            let datatype = i["datatype"]
                .as_str()
                .ok_or_else(|| bad("an input has no datatype"))?
                .parse::<DataType>()
                .map_err(|e| bad(&format!("input \"{name}\": {e}")))?;
            let shape = i["shape"]
                .as_array()
                .ok_or_else(|| bad("an input has no shape"))?
                .iter()
                .map(|d| d.as_i64().unwrap_or(-1))
                .collect();
            Ok(InputSpec {
                name: name.to_string(),
                datatype,
                shape,
            })
        })
        .collect()
}

/// A deterministic input tensor for `spec` with `rows` rows (a dynamic
/// first dimension becomes `rows`, other dynamic dimensions 1).
pub fn make_input(spec: &InputSpec, rows: usize) -> Result<Tensor> {
    let mut shape = spec.shape.clone();
    for (i, d) in shape.iter_mut().enumerate() {
        if *d < 0 {
            *d = if i == 0 {
                i64::try_from(rows).unwrap_or(1)
            } else {
                1
            };
        }
    }
    let n: usize = shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(0))
        .product();
    let f = |i: usize| ((i * 7919) % 1000) as f64 / 250.0 - 2.0;
    let data = match spec.datatype {
        DataType::Fp32 => TensorData::Fp32((0..n).map(|i| f(i) as f32).collect()),
        DataType::Fp64 => TensorData::Fp64((0..n).map(f).collect()),
        DataType::Fp16 => TensorData::Fp16((0..n).map(|i| half::f16::from_f64(f(i))).collect()),
        DataType::Int64 => TensorData::Int64((0..n).map(|i| (i % 10) as i64).collect()),
        DataType::Int32 => TensorData::Int32((0..n).map(|i| (i % 10) as i32).collect()),
        DataType::Bool => TensorData::Bool((0..n).map(|i| i % 2 == 0).collect()),
        DataType::Bytes => {
            TensorData::Bytes((0..n).map(|_| bytes::Bytes::from_static(b"x")).collect())
        }
        other => {
            return Err(AppError::Invalid(format!(
                "the load generator makes FP16/32/64, INT32/64, BOOL and BYTES inputs; \"{}\" is {other}",
                spec.name
            )));
        }
    };
    Tensor::new(spec.name.clone(), shape, data)
        .map_err(|e| AppError::Invalid(format!("input \"{}\": {e}", spec.name)))
}

/// The most a request file may hold (it is read whole).
pub const MAX_REQUEST_FILE_BYTES: u64 = 256 << 20;

/// The requests of a file: one V2 REST infer body (`{"inputs": [...]}`),
/// or several one after another (JSON Lines), each sent in turn. Errors
/// name the file, the request's number and the field.
pub fn read_requests(path: &std::path::Path) -> Result<Vec<Vec<Tensor>>> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(AppError::io(format!("reading request file {shown}")))?
        .len();
    if size > MAX_REQUEST_FILE_BYTES {
        return Err(AppError::Invalid(format!(
            "request file {shown} is {size} bytes; the load generator reads at most {MAX_REQUEST_FILE_BYTES} (split it, or send fewer distinct requests)"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(AppError::io(format!("reading request file {shown}")))?;
    let mut requests = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .enumerate()
    {
        let n = i + 1;
        let value = value.map_err(|e| {
            AppError::Invalid(format!(
                "request file {shown}, request {n}: not JSON ({e}); write one V2 infer body ({{\"inputs\": [...]}}) a line"
            ))
        })?;
        requests.push(
            parse_request(&value).map_err(|e| {
                AppError::Invalid(format!("request file {shown}, request {n}: {e}"))
            })?,
        );
    }
    if requests.is_empty() {
        return Err(AppError::Invalid(format!(
            "request file {shown} holds no request; write one V2 infer body ({{\"inputs\": [...]}}) a line"
        )));
    }
    Ok(requests)
}

/// The input tensors of one V2 REST infer body.
fn parse_request(body: &serde_json::Value) -> std::result::Result<Vec<Tensor>, String> {
    let inputs = body["inputs"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("\"inputs\" must be a non-empty array of {name, datatype, shape, data}")?;
    inputs
        .iter()
        .enumerate()
        .map(|(j, input)| {
            let name = input["name"]
                .as_str()
                .ok_or(format!("inputs[{j}].name must be a string"))?;
            let datatype = input["datatype"]
                .as_str()
                .ok_or(format!(
                    "inputs[{j}].datatype must be a string such as \"FP32\""
                ))?
                .parse::<DataType>()
                .map_err(|e| format!("inputs[{j}].datatype: {e}"))?;
            let shape = input["shape"]
                .as_array()
                .ok_or(format!("inputs[{j}].shape must be an array of dimensions"))?
                .iter()
                .map(|d| {
                    d.as_i64().filter(|d| *d >= 0).ok_or(format!(
                        "inputs[{j}].shape: {d} is not a dimension (a whole number ≥ 0)"
                    ))
                })
                .collect::<std::result::Result<Vec<i64>, String>>()?;
            let data = greenbelt_core::json::decode(name, datatype, &input["data"])
                .map_err(|e| format!("inputs[{j}].data: {e}"))?;
            Tensor::new(name.to_string(), shape, data).map_err(|e| format!("inputs[{j}]: {e}"))
        })
        .collect()
}

/// The V2 REST body for `inputs`.
pub fn rest_body(inputs: &[Tensor]) -> Result<String> {
    let list: Vec<serde_json::Value> = inputs
        .iter()
        .map(|t| {
            Ok(serde_json::json!({
                "name": t.name,
                "shape": t.shape,
                "datatype": t.datatype().as_str(),
                "data": serde_json::to_value(greenbelt_core::json::JsonData(&t.data))
                    .map_err(|e| AppError::Invalid(format!("input \"{}\": {e}", t.name)))?,
            }))
        })
        .collect::<Result<_>>()?;
    serde_json::to_string(&serde_json::json!({ "inputs": list }))
        .map_err(|e| AppError::Invalid(format!("request body: {e}")))
}

/// The V2 gRPC request for `inputs` (raw contents).
pub fn grpc_request(model: &str, inputs: &[Tensor]) -> pb::ModelInferRequest {
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

type GrpcClient =
    pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

/// Why a request failed: shed by the server (HTTP 503, gRPC UNAVAILABLE)
/// or anything else.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub shed: bool,
    pub message: String,
}

impl Failed {
    fn other(message: impl ToString) -> Failed {
        Failed {
            shed: false,
            message: message.to_string(),
        }
    }
}

/// One worker's connection (cheap to clone: clients share their pools).
/// It sends the requests it was made with in turn, from a cursor its
/// clones share.
#[derive(Clone)]
enum Conn {
    Rest {
        client: reqwest::Client,
        url: Arc<String>,
        bodies: Arc<[String]>,
        next: Arc<AtomicUsize>,
    },
    Grpc {
        client: Box<GrpcClient>,
        requests: Arc<[pb::ModelInferRequest]>,
        next: Arc<AtomicUsize>,
    },
}

/// The next of `n` requests from a shared cursor.
fn turn(next: &AtomicUsize, n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        next.fetch_add(1, Ordering::Relaxed) % n
    }
}

impl Conn {
    /// Send one request: whether it succeeded (with the serving version)
    /// or why not.
    async fn send(&mut self) -> std::result::Result<Option<i64>, Failed> {
        match self {
            Conn::Rest {
                client,
                url,
                bodies,
                next,
            } => {
                let body = bodies[turn(next, bodies.len())].clone();
                let resp = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(Failed::other)?;
                let version = resp
                    .headers()
                    .get("x-greenbelt-model-version")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                if resp.status().is_success() {
                    resp.bytes().await.map_err(Failed::other)?;
                    Ok(version)
                } else {
                    Err(Failed {
                        shed: resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                        message: format!(
                            "HTTP {}: {}",
                            resp.status(),
                            resp.text().await.unwrap_or_default()
                        ),
                    })
                }
            }
            Conn::Grpc {
                client,
                requests,
                next,
            } => client
                .model_infer(requests[turn(next, requests.len())].clone())
                .await
                .map(|r| r.into_inner().model_version.parse::<i64>().ok())
                .map_err(|s| Failed {
                    shed: s.code() == tonic::Code::Unavailable,
                    message: format!("{:?}: {}", s.code(), s.message()),
                }),
        }
    }
}

/// Wall-clock milliseconds since the epoch.
fn wall_ms() -> i64 {
    greenbelt_control::rollout::controller::wall_ms()
}

/// The encoded requests a load sends in turn, and the cursor every
/// connection made from them shares (encoded once, whatever the number of
/// connections).
#[derive(Clone)]
enum Encoded {
    Rest(Arc<[String]>),
    Grpc(Arc<[pb::ModelInferRequest]>),
}

fn encode(target: &Target, requests: &[Vec<Tensor>]) -> Result<(Encoded, Arc<AtomicUsize>)> {
    if requests.is_empty() {
        return Err(AppError::Invalid(
            "the load needs at least one request".into(),
        ));
    }
    let encoded = match target.protocol {
        Protocol::Rest => Encoded::Rest(
            requests
                .iter()
                .map(|inputs| rest_body(inputs))
                .collect::<Result<Vec<_>>>()?
                .into(),
        ),
        Protocol::Grpc => Encoded::Grpc(
            requests
                .iter()
                .map(|inputs| grpc_request(&target.model, inputs))
                .collect::<Vec<_>>()
                .into(),
        ),
    };
    Ok((encoded, Arc::new(AtomicUsize::new(0))))
}

/// A connection to `target` sending `encoded` in turn; REST keeps up to
/// `pool` idle connections, gRPC multiplexes one.
async fn connect(
    target: &Target,
    (encoded, next): &(Encoded, Arc<AtomicUsize>),
    pool: usize,
) -> Result<Conn> {
    let next = next.clone();
    Ok(match encoded {
        Encoded::Rest(bodies) => Conn::Rest {
            client: reqwest::Client::builder()
                .timeout(target.timeout)
                .pool_max_idle_per_host(pool)
                .build()?,
            url: Arc::new(format!(
                "{}/v2/models/{}/infer",
                target.rest_url.trim_end_matches('/'),
                target.model
            )),
            bodies: bodies.clone(),
            next,
        },
        Encoded::Grpc(requests) => {
            let channel = tonic::transport::Endpoint::from_shared(target.grpc_url.clone())
                .map_err(|e| AppError::Invalid(format!("gRPC address {}: {e}", target.grpc_url)))?
                .timeout(target.timeout)
                .connect()
                .await
                .map_err(|e| {
                    AppError::Remote(format!("connecting to gRPC {}: {e}", target.grpc_url))
                })?;
            Conn::Grpc {
                client: Box::new(GrpcClient::new(channel).max_decoding_message_size(usize::MAX)),
                requests: requests.clone(),
                next,
            }
        }
    })
}

/// The open-loop rates [`run_open`] accepts (requests per second).
pub const MIN_RATE: f64 = 0.001;
pub const MAX_RATE: f64 = 1_000_000.0;

/// How to run open-loop load.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Requests per second, sent on schedule whatever the answers.
    pub rate: f64,
    /// Requests outstanding at most; one due beyond it is dropped (counted).
    pub max_outstanding: usize,
    pub warmup: Duration,
    /// Measured load, after the warm-up (at most this long with `stop`).
    pub duration: Duration,
    /// Ends the load early when it turns `true` (the failover drill).
    pub stop: Option<watch::Receiver<bool>>,
    /// Keep one [`Sample`] per measured request.
    pub keep_samples: bool,
}

/// Run open-loop load: a request every `1 / rate` seconds (missed ticks
/// are sent late, in a burst, so the offered count is kept), each on its
/// own task, at most `max_outstanding` at once. Waits for the last
/// answers (each bounded by the target's timeout).
pub async fn run_open(
    target: &Target,
    requests: &[Vec<Tensor>],
    opts: OpenOptions,
) -> Result<LoadResult> {
    if !(MIN_RATE..=MAX_RATE).contains(&opts.rate) || opts.max_outstanding == 0 {
        return Err(AppError::Invalid(format!(
            "--rate must be between {MIN_RATE} and {MAX_RATE} requests per second (got {}), and the outstanding bound positive",
            opts.rate
        )));
    }
    let conn = connect(target, &encode(target, requests)?, opts.max_outstanding).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_outstanding));
    // Answers come back on a channel as large as the outstanding bound: a
    // task holds its slot until its answer is queued.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Sample, Option<Failed>)>(opts.max_outstanding);
    let keep = opts.keep_samples;
    let collector = tokio::spawn(async move {
        let mut r = LoadResult::empty()?;
        while let Some((sample, error)) = rx.recv().await {
            r.record(sample, error, keep);
        }
        Ok::<_, AppError>(r)
    });
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut dropped = 0u64;
    let mut stop = opts.stop.clone();
    loop {
        let due = ticks.tick().await;
        if due >= end || stop.as_mut().is_some_and(|s| *s.borrow_and_update()) {
            break;
        }
        let measured = due >= measure_from;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if measured {
                dropped += 1;
            }
            continue;
        };
        let (mut conn, tx) = (conn.clone(), tx.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let sent_ms = wall_ms();
            let outcome = conn.send().await;
            let latency = t0.elapsed();
            if measured {
                let (ok, version, error) = match outcome {
                    Ok(v) => (true, v, None),
                    Err(e) => (false, None, Some(e)),
                };
                let sample = Sample {
                    sent_ms,
                    latency,
                    ok,
                    version,
                };
                let _ = tx.send((sample, error)).await;
            }
            drop(slot);
        });
    }
    drop(tx);
    let wait = target.timeout + Duration::from_secs(5);
    let mut total = tokio::time::timeout(wait, collector).await.map_err(|_| {
        AppError::Remote(format!(
            "open-loop answers still outstanding after {wait:?}"
        ))
    })???;
    total.dropped = dropped;
    total.measured = match opts.stop {
        Some(_) => Instant::now().saturating_duration_since(measure_from),
        None => opts.duration,
    };
    Ok(total)
}

/// Run closed-loop load against `target` and measure it: every
/// connection sends `requests` (each the inputs of one request) in turn.
pub async fn run(
    target: &Target,
    requests: &[Vec<Tensor>],
    opts: LoadOptions,
) -> Result<LoadResult> {
    if opts.connections == 0 {
        return Err(AppError::Invalid(
            "the load needs at least one connection".into(),
        ));
    }
    let encoded = encode(target, requests)?;
    let mut conns = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        conns.push(connect(target, &encoded, 1).await?);
    }
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let deadline = match &opts.stop {
        Stop::After(d) => Some(measure_from + *d),
        Stop::Signal(_) => None,
    };
    let mut workers = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let mut signal = match &opts.stop {
            Stop::Signal(rx) => Some(rx.clone()),
            Stop::After(_) => None,
        };
        let keep = opts.keep_samples;
        let mut r = LoadResult::empty()?;
        workers.push(tokio::spawn(async move {
            loop {
                let t0 = Instant::now();
                if deadline.is_some_and(|d| t0 >= d)
                    || signal.as_mut().is_some_and(|s| *s.borrow_and_update())
                {
                    break;
                }
                let sent_ms = wall_ms();
                let outcome = conn.send().await;
                let latency = t0.elapsed();
                if t0 < measure_from {
                    continue;
                }
                let (ok, version, error) = match outcome {
                    Ok(v) => (true, v, None),
                    Err(e) => (false, None, Some(e)),
                };
                r.record(
                    Sample {
                        sent_ms,
                        latency,
                        ok,
                        version,
                    },
                    error,
                    keep,
                );
            }
            r.measured = Instant::now().saturating_duration_since(measure_from);
            r
        }));
    }
    let mut total = LoadResult::empty()?;
    for w in workers {
        total.merge(w.await?)?;
    }
    if let Stop::After(d) = opts.stop {
        total.measured = d;
    }
    Ok(total)
}

/// Sum and count of a Greenbelt histogram for `model` in /metrics text.
pub fn histogram_sum_count(text: &str, metric: &str, model: &str) -> (f64, f64) {
    let label = format!("model=\"{model}\"");
    let (sum_prefix, count_prefix) = (format!("{metric}_sum{{"), format!("{metric}_count{{"));
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with(&sum_prefix) && line.contains(&label) {
            sum += value();
        } else if line.starts_with(&count_prefix) && line.contains(&label) {
            count += value();
        }
    }
    (sum, count)
}

/// A Greenbelt server's time per request between two /metrics scrapes:
/// (server µs per request, model compute µs per request).
pub fn server_time_per_request(before: &str, after: &str, model: &str) -> Option<(f64, f64)> {
    let req = "greenbelt_request_duration_seconds";
    let comp = "greenbelt_compute_duration_seconds";
    let (rs0, rc0) = histogram_sum_count(before, req, model);
    let (rs1, rc1) = histogram_sum_count(after, req, model);
    let (cs0, _) = histogram_sum_count(before, comp, model);
    let (cs1, _) = histogram_sum_count(after, comp, model);
    let n = rc1 - rc0;
    (n > 0.0).then(|| ((rs1 - rs0) / n * 1e6, (cs1 - cs0) / n * 1e6))
}

/// `GET {base}/metrics` when the server is Greenbelt (it exports
/// `greenbelt_request_duration_seconds`).
pub async fn scrape(client: &reqwest::Client, base: &str) -> Option<String> {
    let resp = client.get(format!("{base}/metrics")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    text.contains("greenbelt_request_duration_seconds")
        .then_some(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn requests_of(text: &str) -> Result<Vec<Vec<Tensor>>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        std::fs::write(&path, text).unwrap();
        read_requests(&path)
    }

    #[test]
    fn a_request_file_holds_one_body_or_one_a_line() {
        let one = requests_of(
            r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [[1, 2]]}]}"#,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0][0].shape, vec![1, 2]);
        assert_eq!(one[0][0].data, TensorData::Fp32(vec![1.0, 2.0]));
        let lines = requests_of(concat!(
            r#"{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u1"]}]}"#,
            "\n",
            r#"{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u2", "u3"]}]}"#,
            "\n"
        ))
        .unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1][0].data,
            TensorData::Bytes(vec![
                bytes::Bytes::from_static(b"u2"),
                bytes::Bytes::from_static(b"u3")
            ])
        );
        // Every request encodes to a body of its own, in order.
        let target = Target {
            rest_url: "http://127.0.0.1:1".into(),
            grpc_url: String::new(),
            protocol: Protocol::Rest,
            model: "m".into(),
            timeout: Duration::from_secs(1),
        };
        let (Encoded::Rest(bodies), next) = encode(&target, &lines).unwrap() else {
            panic!("REST target")
        };
        assert!(bodies[0].contains("\"u1\"") && bodies[1].contains("\"u3\""));
        let order: Vec<usize> = (0..5).map(|_| turn(&next, bodies.len())).collect();
        assert_eq!(order, vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn a_bad_request_file_names_the_request_and_the_field() {
        for (text, expect) in [
            ("", "holds no request"),
            (
                "{\"inputs\": [] }",
                "request 1: \"inputs\" must be a non-empty array",
            ),
            (
                "{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP32\", \"shape\": [1], \"data\": [1]}]}\n{oops",
                "request 2: not JSON",
            ),
            (
                "{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP99\", \"shape\": [1], \"data\": [1]}]}",
                "inputs[0].datatype",
            ),
            (
                "{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP32\", \"shape\": [-1], \"data\": [1]}]}",
                "inputs[0].shape: -1 is not a dimension",
            ),
            (
                "{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP32\", \"shape\": [3], \"data\": [1]}]}",
                "inputs[0]",
            ),
        ] {
            let e = requests_of(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{text:?}: {e}");
        }
        let missing = read_requests(std::path::Path::new("/nonexistent/requests.jsonl"));
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/requests.jsonl"),
            "the error names the file"
        );
    }

    fn sample(ms: u64, ok: bool) -> Sample {
        Sample {
            sent_ms: 0,
            latency: Duration::from_millis(ms),
            ok,
            version: None,
        }
    }

    #[test]
    fn summary_counts_only_successes_in_latency() {
        let mut r = LoadResult::empty().unwrap();
        for ms in 1..=100 {
            r.record(sample(ms, true), None, false);
        }
        r.record(sample(5000, false), Some(Failed::other("HTTP 500")), true);
        let shed = Failed {
            shed: true,
            message: "second".into(),
        };
        r.record(sample(5000, false), Some(shed), true);
        let s = r.summary(10.0);
        assert_eq!((s.requests, s.errors, r.shed), (100, 2, 1));
        assert!((s.throughput_rps - 10.0).abs() < 1e-9);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(r.first_error.as_deref(), Some("HTTP 500"));
        assert_eq!(r.samples.len(), 2, "samples are kept only when asked");
    }

    #[test]
    fn merging_workers_adds_counts_and_keeps_the_first_error() {
        let mut a = LoadResult::empty().unwrap();
        a.record(sample(1, true), None, true);
        let mut b = LoadResult::empty().unwrap();
        b.record(sample(3, false), Some(Failed::other("b")), true);
        b.record(sample(2, true), None, true);
        b.measured = Duration::from_secs(2);
        a.merge(b).unwrap();
        assert_eq!((a.ok, a.errors, a.samples.len()), (2, 1, 3));
        assert_eq!(a.first_error.as_deref(), Some("b"));
        assert_eq!(a.measured, Duration::from_secs(2));
        let empty = LoadResult::empty().unwrap().summary(0.0);
        assert_eq!((empty.throughput_rps, empty.p99_ms), (0.0, 0.0));
    }

    #[test]
    fn server_time_comes_from_the_histograms_between_scrapes() {
        let before = "greenbelt_request_duration_seconds_sum{model=\"m\",version=\"1\"} 1.0\n\
                      greenbelt_request_duration_seconds_count{model=\"m\",version=\"1\"} 10\n\
                      greenbelt_compute_duration_seconds_sum{model=\"m\",version=\"1\"} 0.5\n\
                      greenbelt_request_duration_seconds_sum{model=\"other\",version=\"1\"} 9\n";
        let after = "greenbelt_request_duration_seconds_sum{model=\"m\",version=\"1\"} 1.002\n\
                     greenbelt_request_duration_seconds_count{model=\"m\",version=\"1\"} 20\n\
                     greenbelt_compute_duration_seconds_sum{model=\"m\",version=\"1\"} 0.501\n";
        let (server, compute) = server_time_per_request(before, after, "m").unwrap();
        assert!((server - 200.0).abs() < 1e-6, "{server}");
        assert!((compute - 100.0).abs() < 1e-6, "{compute}");
        assert_eq!(server_time_per_request(after, after, "m"), None);
    }

    #[test]
    fn inputs_follow_the_metadata() {
        let meta = serde_json::json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "flag", "datatype": "BOOL", "shape": [-1]},
        ]});
        let specs = parse_inputs(&meta).unwrap();
        let x = make_input(&specs[0], 4).unwrap();
        assert_eq!(x.shape, [4, 3]);
        assert_eq!(x.datatype(), DataType::Fp32);
        let flag = make_input(&specs[1], 2).unwrap();
        assert_eq!(flag.shape, [2]);
        let body = rest_body(std::slice::from_ref(&x)).unwrap();
        assert!(body.contains("\"shape\":[4,3]"), "{body}");
        let req = grpc_request("m", &[x]);
        assert_eq!(req.raw_input_contents[0].len(), 4 * 3 * 4);
        let bad = InputSpec {
            name: "u".into(),
            datatype: DataType::Uint8,
            shape: vec![1],
        };
        assert!(
            make_input(&bad, 1)
                .unwrap_err()
                .to_string()
                .contains("\"u\"")
        );
        assert!(parse_inputs(&serde_json::json!({})).is_err());
    }
}
