//! Observe: what happens after the answer is known and costs the client
//! nothing it waits for — per-version metrics (pre-resolved handles), one
//! log record queued for the writer thread (`crate::reqlog`), and the shadow copies (offered to a bounded queue with
//! `try_send`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use greenbelt_core::Tensor;
use tokio::time::Instant;

use crate::error::{Outcome, ServeError};
use crate::metrics::{Metrics, Protocol};
use crate::repository::ServedVersion;
use crate::reqlog::{Record, RequestLog};
use crate::routing::Track;
use crate::shadow::{ShadowJob, Shadows};

/// Per-request identity and timing, filled in by the transport.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub trace_id: String,
    pub protocol: Protocol,
    pub started: Instant,
    /// Request headers (gRPC metadata), for routing: the track header and
    /// a deployment's sticky-key header.
    pub headers: axum::http::HeaderMap,
    /// Who is calling, when the request carried a valid token.
    pub principal: Option<crate::auth::Principal>,
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub queue: Duration,
    pub compute: Duration,
    pub rows: usize,
    pub batch_rows: usize,
    pub request_bytes: usize,
    pub response_bytes: usize,
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
        match seen.served {
            Some(served) => {
                served.metrics.request(ctx.protocol, outcome, took);
                if result.is_ok() {
                    served.metrics.queue(stats.queue);
                    served.metrics.compute(stats.compute);
                    served.metrics.rows(stats.rows);
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
    }

    fn log(
        &self,
        ctx: &RequestContext,
        seen: &Seen<'_>,
        result: Result<(), &ServeError>,
        stats: &Stats,
        took: Duration,
    ) {
        if !self.log.wants(&ctx.trace_id, result.is_err()) {
            return;
        }
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Success, None),
            Err(e) => (e.outcome(), Some((e.http_status().as_u16(), e.to_string()))),
        };
        self.log.log(Record {
            at: SystemTime::now(),
            request_id: ctx.request_id.clone(),
            trace_id: ctx.trace_id.clone(),
            protocol: ctx.protocol.as_str(),
            model: seen.model.to_string(),
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
    pub fn offer(self, queue: &Shadows, primary: &[Tensor], took: Duration, request_id: &str) {
        for shadow in self.shadows {
            queue.offer(ShadowJob {
                deployment: self.deployment.clone(),
                shadow,
                inputs: self.inputs.clone(),
                primary: primary.to_vec(),
                primary_latency: took,
                request_id: request_id.to_string(),
            });
        }
    }
}
