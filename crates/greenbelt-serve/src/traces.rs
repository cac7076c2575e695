//! OpenTelemetry traces over OTLP.
//!
//! The request path pays nothing for a request that is not sampled: the
//! decision is one comparison on the trace id ([`Tracer::decide`]), taken
//! when the request arrives. A sampled request's spans come from the
//! instants the stages already record (admission, decode, feature lookup,
//! batch queue, compute), with their real start and end times: a server
//! span named per the HTTP / gRPC semantic conventions and one child per
//! stage. The observe stage only queues them (owned, with wall-clock
//! times) for the span thread, which builds them through the SDK, so a
//! sampled request is not slower than the others (which would show in the
//! tail: at a 1% ratio the sampled requests *are* the p99). The SDK's
//! batch processor exports them from its own thread over OTLP (gRPC or
//! HTTP/protobuf); a full queue, either one, drops spans, it never blocks
//! a request.
//!
//! Sampling is parent-based: a caller's `traceparent` decides (its sampled
//! flag); a new trace is sampled when the low 64 bits of its id fall under
//! `sample_ratio` (OpenTelemetry's `TraceIdRatioBased` rule, the same rule
//! the request log samples by). Operations that are not requests
//! (registry writes, materialization, rollout steps) are rare and always
//! recorded when tracing is on; they use the global tracer
//! (`opentelemetry::global`), which this module installs.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, ShouldSample,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `[tracing]` in greenbelt.toml.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The OTLP collector: `http://host:4317` for gRPC, `http://host:4318`
    /// (or the full `.../v1/traces` URL) for HTTP/protobuf. Empty: traces
    /// off (the default); `OTEL_EXPORTER_OTLP_ENDPOINT` fills it when set.
    pub endpoint: String,
    /// `grpc` or `http/protobuf` (OpenTelemetry's names).
    pub protocol: String,
    /// Share of new traces recorded, in [0, 1]. A caller's `traceparent`
    /// overrides it for its trace (parent-based).
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Spans waiting for export at most; past it they are dropped.
    pub max_queue: usize,
    /// How often the batch processor exports.
    /// (Old key `export_interval_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "export_interval",
        alias = "export_interval_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub export_interval_ms: u64,
    /// One export call's limit.
    /// (Old key `export_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "export_timeout",
        alias = "export_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub export_timeout_ms: u64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: String::new(),
            protocol: "grpc".into(),
            sample_ratio: 0.01,
            service_name: "greenbelt".into(),
            max_queue: 4096,
            export_interval_ms: 1000,
            export_timeout_ms: 5000,
        }
    }
}

impl TracingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "[tracing] sample_ratio must be in [0, 1], got {}",
                self.sample_ratio
            ));
        }
        if !matches!(self.protocol.as_str(), "grpc" | "http/protobuf") {
            return Err(format!(
                "[tracing] protocol = \"{}\": use \"grpc\" (port 4317) or \"http/protobuf\" (port 4318)",
                self.protocol
            ));
        }
        if !self.endpoint.is_empty() {
            let uri: axum::http::Uri = self.endpoint.parse().map_err(|e| {
                format!(
                    "[tracing] endpoint = \"{}\" is not a URL ({e}); write it like http://127.0.0.1:4317",
                    self.endpoint
                )
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "[tracing] endpoint = \"{}\" needs http:// or https:// and a host, like http://127.0.0.1:4317",
                    self.endpoint
                ));
            }
        }
        for (name, v) in [
            ("max_queue", self.max_queue as u64),
            ("export_interval", self.export_interval_ms),
            ("export_timeout", self.export_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("[tracing] {name} must be > 0"));
            }
        }
        Ok(())
    }

    /// The endpoint with `OTEL_EXPORTER_OTLP_ENDPOINT` as the fallback.
    fn effective_endpoint(&self) -> Option<String> {
        if !self.endpoint.is_empty() {
            return Some(self.endpoint.clone());
        }
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
    }
}

/// The ratio as a threshold on the low 64 bits of a trace id; `None`
/// samples nothing.
pub(crate) fn threshold(ratio: f64) -> Option<u64> {
    if ratio <= 0.0 {
        None
    } else if ratio >= 1.0 {
        Some(u64::MAX)
    } else {
        // In (0, 1): the float product is below 2^64 and saturates on cast.
        Some((ratio * u64::MAX as f64) as u64)
    }
}

fn low64(trace_id: TraceId) -> u64 {
    u128::from_be_bytes(trace_id.to_bytes()) as u64
}

fn under(trace_id: TraceId, threshold: Option<u64>) -> bool {
    threshold.is_some_and(|t| low64(trace_id) <= t)
}

/// Parent-based; a root request span by trace-id ratio; any other root
/// (a background operation) always.
#[derive(Debug, Clone)]
struct Sampler {
    threshold: Option<u64>,
}

impl ShouldSample for Sampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry::trace::SamplingResult {
        use opentelemetry::trace::{SamplingDecision, SamplingResult};
        let parent = parent_context
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone());
        let sampled = match (&parent, span_kind) {
            (Some(p), _) => p.is_sampled(),
            (None, SpanKind::Server) => under(trace_id, self.threshold),
            (None, _) => true,
        };
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent.map(|p| p.trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// One request's trace identity, as the transports see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceIds {
    pub trace_id: TraceId,
    /// Our server span.
    pub span_id: SpanId,
    /// The caller's span, from a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// Recorded (and so exported) by this server.
    pub sampled: bool,
}

/// The OTLP pipeline, or nothing when tracing is off.
pub struct Tracer {
    inner: Option<Inner>,
    threshold: Option<u64>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// Sampled requests on their way to the span thread (`None` once
    /// shut down).
    queue: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<Finished>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped: std::sync::atomic::AtomicU64,
}

/// A sampled request's spans with their wall-clock times, owned, queued
/// for the span thread.
struct Finished {
    ids: TraceIds,
    name: Cow<'static, str>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    stages: Vec<(&'static str, SystemTime, SystemTime, Vec<KeyValue>)>,
    error: Option<String>,
}

impl Finished {
    /// The server span and one child per stage, through the SDK (on the
    /// span thread).
    fn build(self, tracer: &SdkTracer) {
        let mut parent_cx = Context::new();
        if let Some(p) = self.ids.parent {
            parent_cx = parent_cx.with_remote_span_context(SpanContext::new(
                self.ids.trace_id,
                p,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ));
        }
        let server = tracer
            .span_builder(self.name)
            .with_kind(SpanKind::Server)
            .with_trace_id(self.ids.trace_id)
            .with_span_id(self.ids.span_id)
            .with_start_time(self.start)
            .with_attributes(self.attributes)
            .start_with_context(tracer, &parent_cx);
        let cx = Context::new().with_span(server);
        for (name, start, end, attributes) in self.stages {
            let mut child = tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .with_start_time(start)
                .with_attributes(attributes)
                .start_with_context(tracer, &cx);
            child.end_with_timestamp(end);
        }
        let server = cx.span();
        if let Some(message) = self.error {
            server.set_status(Status::error(message));
        }
        server.end_with_timestamp(self.end);
    }
}

impl Tracer {
    pub fn disabled() -> Tracer {
        Tracer {
            inner: None,
            threshold: None,
        }
    }

    /// Build the exporter and the batch processor, and install the global
    /// tracer provider. Call inside the Tokio runtime (the gRPC exporter's
    /// channel runs on it).
    pub fn from_config(config: &TracingConfig) -> Result<Tracer, String> {
        let Some(endpoint) = config.effective_endpoint() else {
            return Ok(Tracer::disabled());
        };
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let exporter = match config.protocol.as_str() {
            "http/protobuf" => {
                let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
                    endpoint.clone()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(url)
                    .with_timeout(timeout)
                    .build()
            }
            _ => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(timeout)
                .build(),
        }
        .map_err(|e| format!("[tracing] cannot set up the OTLP exporter for {endpoint}: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue)
            .with_max_export_batch_size(config.max_queue.min(512))
            .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
            .build();
        let threshold = threshold(config.sample_ratio);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(Sampler { threshold })
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer("greenbelt");
        // A sampled request is about six spans: a quarter of the export
        // queue's spans in requests.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Finished>((config.max_queue / 4).max(1));
        let thread = {
            let tracer = tracer.clone();
            std::thread::Builder::new()
                .name("greenbelt-spans".into())
                .spawn(move || {
                    for finished in rx {
                        finished.build(&tracer);
                    }
                })
                .map_err(|e| format!("[tracing] cannot start the span thread: {e}"))?
        };
        tracing::info!(endpoint = %endpoint, protocol = %config.protocol, sample_ratio = config.sample_ratio, "OpenTelemetry traces on");
        Ok(Tracer {
            inner: Some(Inner {
                tracer,
                provider,
                queue: std::sync::Mutex::new(Some(tx)),
                thread: std::sync::Mutex::new(Some(thread)),
                dropped: std::sync::atomic::AtomicU64::new(0),
            }),
            threshold,
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The trace identity of a request from its `traceparent` header:
    /// continued when valid, else new; sampled per the parent, else by
    /// ratio. With tracing off nothing is recorded, so a new trace is
    /// marked not sampled and a caller's flag passes through unchanged.
    pub fn decide(&self, traceparent: Option<&str>) -> TraceIds {
        let parsed = traceparent.and_then(parse_traceparent);
        match parsed {
            Some((trace_id, parent, flags)) => TraceIds {
                trace_id,
                span_id: random_span_id(),
                parent: Some(parent),
                sampled: flags.is_sampled(),
            },
            None => {
                let trace_id = random_trace_id();
                TraceIds {
                    trace_id,
                    span_id: random_span_id(),
                    parent: None,
                    sampled: self.enabled() && under(trace_id, self.threshold),
                }
            }
        }
    }

    /// The spans of one finished request, when it is sampled. The request
    /// path only takes the wall-clock times and queues the request for
    /// the span thread, which talks to the SDK; a full queue drops it.
    pub fn request(&self, span: RequestSpan<'_>) {
        let Some(inner) = &self.inner else { return };
        if !span.ids.sampled {
            return;
        }
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let wall = |t: Instant| wall_now - now.saturating_duration_since(t);
        let mut attributes = span.attributes;
        attributes.push(KeyValue::new(
            "greenbelt.request_id",
            span.request_id.to_string(),
        ));
        let finished = Finished {
            ids: span.ids.clone(),
            name: span.name,
            start: wall(span.started),
            end: wall_now,
            attributes,
            stages: span
                .stages
                .into_iter()
                .filter(|s| s.end >= s.start)
                .map(|s| (s.name, wall(s.start), wall(s.end), s.attributes))
                .collect(),
            error: span.error,
        };
        let queue = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = queue.as_ref()
            && let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send(finished)
        {
            inner
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sampled requests whose spans were dropped because the span
    /// thread's queue was full.
    pub fn dropped_requests(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A span under a request's server span that ended after the answer
    /// (a shadow's inference): `started` and `took` on the wall clock.
    pub fn child(
        &self,
        ids: &TraceIds,
        name: &'static str,
        started: SystemTime,
        took: Duration,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        let Some(inner) = &self.inner else { return };
        if !ids.sampled {
            return;
        }
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            ids.trace_id,
            ids.span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ));
        let mut span = inner
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&inner.tracer, &parent);
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end_with_timestamp(started + took);
    }

    /// Flush and stop the exporter (at shutdown).
    pub fn shutdown(&self) {
        let Some(inner) = &self.inner else { return };
        // Closing the queue ends the span thread once it has built what
        // was queued (a bounded amount); then the exporter flushes.
        drop(inner.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            && thread.join().is_err()
        {
            tracing::warn!("the span thread panicked");
        }
        let dropped = self.dropped_requests();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "sampled requests whose spans were dropped: the span queue was full"
            );
        }
        if let Err(e) = inner.provider.shutdown() {
            tracing::warn!(error = %e, "stopping the trace exporter failed");
        }
    }
}

/// One stage of a request, as a child span.
pub struct Stage {
    pub name: &'static str,
    pub start: Instant,
    pub end: Instant,
    pub attributes: Vec<KeyValue>,
}

/// What [`Tracer::request`] turns into spans.
pub struct RequestSpan<'a> {
    pub ids: &'a TraceIds,
    pub name: Cow<'static, str>,
    pub request_id: &'a str,
    pub started: Instant,
    pub attributes: Vec<KeyValue>,
    pub stages: Vec<Stage>,
    /// The failure, for the span status.
    pub error: Option<String>,
}

/// `00-<trace id>-<parent id>-<flags>`, lower-case hex, not all-zero ids,
/// version not `ff` (W3C Trace Context).
fn parse_traceparent(h: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let mut parts = h.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() && version == "00" {
        return None;
    }
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version, 2) && version != "ff" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some((
        trace_id,
        span_id,
        TraceFlags::new(flags),
    ))
}

/// Ids come from a thread-local generator (`fastrand`), not the OS: a
/// `getrandom` call per request would be a syscall on the request path.
fn random_trace_id() -> TraceId {
    TraceId::from_bytes(fastrand::u128(1..).to_be_bytes())
}

fn random_span_id() -> SpanId {
    SpanId::from_bytes(fastrand::u64(1..).to_be_bytes())
}

impl TraceIds {
    /// The low 64 bits of the trace id, which sampling decisions compare.
    pub fn low64(&self) -> u64 {
        low64(self.trace_id)
    }

    /// The trace id as 32 hex digits (log lines, exemplars).
    pub fn trace_hex(&self) -> String {
        self.trace_id.to_string()
    }

    /// `traceparent` / `traceresponse` to send back: the same trace, our
    /// server span, our sampling decision.
    pub fn header(&self) -> String {
        let mut h = String::with_capacity(55);
        h.push_str("00-");
        crate::telemetry::push_hex(&mut h, &self.trace_id.to_bytes());
        h.push('-');
        crate::telemetry::push_hex(&mut h, &self.span_id.to_bytes());
        h.push_str(if self.sampled { "-01" } else { "-00" });
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_traceparent_and_follows_its_flag() {
        let t = Tracer::disabled();
        let ids = t.decide(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(ids.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ids.parent.map(|p| p.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(ids.sampled);
        let h = ids.header();
        assert!(h.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(h.ends_with("-01"));
        assert!(
            !h.contains("00f067aa0ba902b7"),
            "our span replaces the parent"
        );
        let unsampled = t.decide(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled);
        assert!(unsampled.header().ends_with("-00"));
        assert_eq!(
            unsampled.header(),
            format!("00-{}-{}-00", unsampled.trace_id, unsampled.span_id)
        );
    }

    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        let t = Tracer::disabled();
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let ids = t.decide(Some(bad));
            assert_ne!(ids.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert_eq!(ids.parent, None, "{bad}");
            assert!(!ids.sampled, "tracing off records nothing: {bad}");
        }
    }

    #[test]
    fn the_ratio_follows_the_low_bits_of_the_trace_id() {
        let id = |low: u64| TraceId::from_bytes(u128::from(low).to_be_bytes());
        assert!(!under(id(0), threshold(0.0)));
        assert!(under(id(u64::MAX), threshold(1.0)));
        assert!(under(id(u64::MAX / 4), threshold(0.5)));
        assert!(!under(id(u64::MAX / 4 * 3), threshold(0.5)));
        let s = Sampler {
            threshold: threshold(0.5),
        };
        let decide = |kind: SpanKind, low: u64| {
            s.should_sample(None, id(low), "x", &kind, &[], &[])
                .decision
                == opentelemetry::trace::SamplingDecision::RecordAndSample
        };
        assert!(decide(SpanKind::Server, 1));
        assert!(!decide(SpanKind::Server, u64::MAX));
        assert!(
            decide(SpanKind::Internal, u64::MAX),
            "background roots are always recorded"
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = |f: &dyn Fn(&mut TracingConfig)| {
            let mut c = TracingConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.sample_ratio = 1.5).contains("sample_ratio"));
        assert!(bad(&|c| c.protocol = "thrift".into()).contains("protocol"));
        assert!(bad(&|c| c.endpoint = "localhost:4317".into()).contains("endpoint"));
        assert!(bad(&|c| c.max_queue = 0).contains("max_queue"));
        assert!(TracingConfig::default().validate().is_ok());
    }
}
