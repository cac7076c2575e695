//! Observe: what happens after the answer is known and costs the client
//! nothing it waits for — per-version metrics (pre-resolved handles), one
//! log record queued for the writer thread (`crate::reqlog`), and the shadow copies (offered to a bounded queue with
//! `try_send`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use greenbelt_core::Tensor;
use opentelemetry::KeyValue;
use tokio::time::Instant;

use crate::error::{Outcome, ServeError};
use crate::metrics::{Metrics, Protocol};
use crate::repository::ServedVersion;
use crate::reqlog::{Record, RequestLog};
use crate::routing::Track;
use crate::shadow::{ShadowJob, Shadows};
use crate::traces::{RequestSpan, Stage, TraceIds, Tracer};

/// Per-request identity and timing, filled in by the transport.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// The trace this request belongs to and whether it is recorded.
    pub trace: TraceIds,
    pub protocol: Protocol,
    /// The route template (`/v2/models/{model_name}/infer`) or the gRPC
    /// method, for the server span's name.
    pub route: &'static str,
    pub started: Instant,
    /// When admission let the request in and when its body was decoded
    /// (set by the transport; the trace's first stages).
    pub admitted: Option<Instant>,
    pub decoded: Option<Instant>,
    /// Request headers (gRPC metadata), for routing: the track header and
    /// a deployment's sticky-key header.
    pub headers: axum::http::HeaderMap,
    /// Who is calling, when the request carried a valid token.
    pub principal: Option<crate::auth::Principal>,
    /// The CPU of decoding and encoding, when the request is in the
    /// cost sample (`crate::cost::meter`).
    pub cpu: crate::cost::RequestCpu,
}

impl RequestContext {
    /// A request that just arrived: its id (the caller's `x-request-id`
    /// when usable) and its trace (the caller's `traceparent` continued).
    pub fn new(
        protocol: Protocol,
        route: &'static str,
        headers: axum::http::HeaderMap,
        principal: Option<crate::auth::Principal>,
        tracer: &Tracer,
    ) -> RequestContext {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        RequestContext {
            request_id: crate::telemetry::request_id(header("x-request-id")),
            trace: tracer.decide(header("traceparent")),
            protocol,
            route,
            started: Instant::now(),
            admitted: None,
            decoded: None,
            headers,
            principal,
            cpu: crate::cost::RequestCpu::sample(),
        }
    }
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub queue: Duration,
    pub compute: Duration,
    /// The request's CPU in the model call (its share of a batch's).
    pub compute_cpu: Duration,
    pub rows: usize,
    pub batch_rows: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
    /// The feature lookup's start and end, when the model reads features.
    pub features: Option<(Instant, Instant)>,
    /// When the request was handed to the batcher or the compute pool
    /// (`queue` then `compute` follow it).
    pub executed: Option<Instant>,
}

/// Where a request ended up, as far as it got.
pub struct Seen<'a> {
    pub model: &'a str,
    /// The version that was chosen; `None` when routing failed.
    pub served: Option<&'a ServedVersion>,
    pub track: Option<Track>,
    /// The model is a deployment with a routing plan (count its tracks).
    pub deployment: bool,
}

/// The telemetry sinks the request path writes to.
pub struct Observer<'a> {
    pub metrics: &'a Metrics,
    pub log: &'a RequestLog,
    pub traces: &'a Tracer,
}

impl Observer<'_> {
    /// Record one finished request: metrics and the log line.
    pub fn finished(
        &self,
        ctx: &RequestContext,
        seen: &Seen<'_>,
        result: Result<(), &ServeError>,
        stats: &Stats,
    ) {
        let took = ctx.started.elapsed();
        let outcome = match result {
            Ok(()) => Outcome::Success,
            Err(e) => e.outcome(),
        };
        // A recorded trace is an exemplar of the latency histogram.
        let traced = ctx.trace.sampled && self.traces.enabled();
        match seen.served {
            Some(served) => {
                let exemplar = traced.then(|| ctx.trace.trace_hex());
                served
                    .metrics
                    .request(ctx.protocol, outcome, took, exemplar);
                if result.is_ok() {
                    served.metrics.queue(stats.queue);
                    served.metrics.compute(stats.compute);
                    served.metrics.rows(stats.rows);
                    served
                        .metrics
                        .cost()
                        .answered(stats.rows, stats.features.is_some());
                    served
                        .metrics
                        .payload(stats.request_bytes, stats.response_bytes);
                    if let (true, Some(track)) = (seen.deployment, seen.track) {
                        served.metrics.routed(track);
                    }
                }
            }
            None => self.metrics.unresolved(ctx.protocol, outcome),
        }
        // Sheds are counted where they happen, each under its own reason
        // (admission, the concurrency limit, the batch queue, the queue budget).
        self.log(ctx, seen, result, stats, took);
        if traced {
            self.trace(ctx, seen, result, stats);
        }
    }

    /// The request's spans: the server span and one per stage it reached.
    fn trace(
        &self,
        ctx: &RequestContext,
        seen: &Seen<'_>,
        result: Result<(), &ServeError>,
        stats: &Stats,
    ) {
        let mut stages = Vec::with_capacity(5);
        let mut stage =
            |name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>| {
                stages.push(Stage {
                    name,
                    start,
                    end,
                    attributes,
                });
            };
        if let Some(admitted) = ctx.admitted {
            stage("admission", ctx.started, admitted, Vec::new());
            if let Some(decoded) = ctx.decoded {
                stage("decode", admitted, decoded, Vec::new());
            }
        }
        if let Some((start, end)) = stats.features {
            stage("feature_lookup", start, end, Vec::new());
        }
        if let Some(at) = stats.executed {
            stage(
                "batch_queue",
                at,
                at + stats.queue,
                vec![KeyValue::new(
                    "greenbelt.batch_rows",
                    stats.batch_rows as i64,
                )],
            );
            if result.is_ok() {
                stage(
                    "compute",
                    at + stats.queue,
                    at + stats.queue + stats.compute,
                    vec![
                        KeyValue::new("greenbelt.rows", stats.rows as i64),
                        KeyValue::new(
                            "greenbelt.cpu_us",
                            i64::try_from(stats.compute_cpu.as_micros()).unwrap_or(i64::MAX),
                        ),
                    ],
                );
            }
        }
        let mut attributes = Vec::with_capacity(12);
        match ctx.protocol {
            Protocol::Rest => {
                let status = result.map_or_else(|e| e.http_status().as_u16(), |()| 200);
                attributes.extend([
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("http.route", ctx.route),
                    KeyValue::new("http.response.status_code", i64::from(status)),
                ]);
            }
            Protocol::Grpc => {
                let code = result.map_or_else(|e| e.grpc_code() as i64, |()| 0);
                attributes.extend([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "inference.GRPCInferenceService"),
                    KeyValue::new("rpc.method", "ModelInfer"),
                    KeyValue::new("rpc.grpc.status_code", code),
                ]);
            }
        }
        attributes.push(KeyValue::new("greenbelt.model", seen.model.to_string()));
        if let Some(v) = seen.served {
            attributes.push(KeyValue::new(
                "greenbelt.model_version",
                v.version_label.to_string(),
            ));
        }
        if let Some(t) = seen.track {
            attributes.push(KeyValue::new("greenbelt.track", t.as_str()));
        }
        let outcome = result.map_or_else(|e| e.outcome(), |()| Outcome::Success);
        attributes.push(KeyValue::new("greenbelt.outcome", outcome.as_str()));
        if result.is_ok() {
            attributes.extend([
                KeyValue::new("greenbelt.request_bytes", stats.request_bytes as i64),
                KeyValue::new("greenbelt.response_bytes", stats.response_bytes as i64),
            ]);
        }
        // A server span's status is an error only for the server's own
        // failures (5xx), per the HTTP semantic conventions.
        let error = result
            .err()
            .filter(|e| e.http_status().is_server_error())
            .map(ToString::to_string);
        self.traces.request(RequestSpan {
            ids: &ctx.trace,
            name: match ctx.protocol {
                Protocol::Rest => Cow::Owned(format!("POST {}", ctx.route)),
                Protocol::Grpc => Cow::Borrowed("inference.GRPCInferenceService/ModelInfer"),
            },
            request_id: &ctx.request_id,
            started: ctx.started,
            attributes,
            stages,
            error,
        });
    }

    fn log(
        &self,
        ctx: &RequestContext,
        seen: &Seen<'_>,
        result: Result<(), &ServeError>,
        stats: &Stats,
        took: Duration,
    ) {
        if !self.log.wants(ctx.trace.low64(), result.is_err()) {
            return;
        }
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Success, None),
            Err(e) => (e.outcome(), Some((e.http_status().as_u16(), e.to_string()))),
        };
        self.log.log(Record {
            at: SystemTime::now(),
            request_id: ctx.request_id.clone(),
            trace_id: ctx.trace.trace_id,
            protocol: ctx.protocol.as_str(),
            model: match seen.served {
                Some(v) if &*v.model_name == seen.model => v.model_name.clone(),
                _ => Arc::from(seen.model),
            },
            version: seen.served.map(|v| v.version_label.clone()),
            track: seen.track.map_or("", Track::as_str),
            outcome: outcome.as_str(),
            error,
            latency: took,
            queue: stats.queue,
            compute: stats.compute,
            rows: stats.rows,
            batch_rows: stats.batch_rows,
            request_bytes: stats.request_bytes,
            response_bytes: stats.response_bytes,
        });
    }
}

/// The copies one answered request owes its deployment's shadows.
pub struct Mirror {
    pub deployment: Arc<str>,
    pub shadows: Vec<Arc<ServedVersion>>,
    pub inputs: Vec<Tensor>,
}

impl Mirror {
    /// Offer a copy to every shadow; never waits (a full queue drops and counts).
    pub fn offer(self, queue: &Shadows, primary: &[Tensor], ctx: &RequestContext) {
        let took = ctx.started.elapsed();
        for shadow in self.shadows {
            queue.offer(ShadowJob {
                deployment: self.deployment.clone(),
                shadow,
                inputs: self.inputs.clone(),
                primary: primary.to_vec(),
                primary_latency: took,
                request_id: ctx.request_id.clone(),
                trace: ctx.trace.sampled.then(|| ctx.trace.clone()),
            });
        }
    }
}
