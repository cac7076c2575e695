//! Every Prometheus metric the server exports, with its name, help and
//! buckets, defined here and nowhere else. Labels are bounded: model,
//! version, protocol, outcome (never a request or user id). Handles for a
//! model version are created once when it loads, so the hot path does no
//! label hashing.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `greenbelt_requests_total` | counter | model, version, protocol, outcome |
//! | `greenbelt_request_duration_seconds` | histogram | model, version |
//! | `greenbelt_queue_duration_seconds` | histogram | model, version |
//! | `greenbelt_compute_duration_seconds` | histogram | model, version |
//! | `greenbelt_request_payload_bytes` | histogram | model, version |
//! | `greenbelt_response_payload_bytes` | histogram | model, version |
//! | `greenbelt_batch_size` | histogram | model, version |
//! | `greenbelt_inflight_requests` | gauge | model |
//! | `greenbelt_model_ready` | gauge | model, version |
//! | `greenbelt_model_load_duration_seconds` | gauge | model, version |
//! | `greenbelt_model_load_failures_total` | counter | model |
//! | `greenbelt_shed_total` | counter | reason |
//! | `greenbelt_concurrency_limit` | gauge | model |
//! | `greenbelt_overload_shed_total` | counter | model, reason (concurrency_limit, queue_time), priority |
//! | `greenbelt_route_requests_total` | counter | deployment, version, track |
//! | `greenbelt_shadow_requests_total` | counter | deployment, version, outcome (compared, error, dropped) |
//! | `greenbelt_shadow_rows_total` | counter | deployment, version, agreement (agree, disagree) |
//! | `greenbelt_shadow_abs_diff` | histogram | deployment, version |
//! | `greenbelt_shadow_duration_seconds` | histogram | deployment, version |
//! | `greenbelt_rollout_canary_weight_ratio` | gauge | deployment |
//! | `greenbelt_rollout_events_total` | counter | deployment, event |
//! | `greenbelt_drift_psi`, `_ks_statistic`, `_ks_pvalue`, `_chi2_pvalue`, `_jensenshannon`, `_missing_ratio` | gauge | model, version, feature |
//! | `greenbelt_drift_drifted_features`, `_window_requests` | gauge | model, version |
//! | `greenbelt_prediction_drift_psi`, `_ks_statistic`, `greenbelt_prediction_confidence_mean`, `_entropy_mean` | gauge | model, version |
//! | `greenbelt_features_not_present_ratio` | gauge | model, version |
//! | `greenbelt_model_accuracy`, `_auc`, `_rmse`, `_labelled_predictions` | gauge | model, version |
//! | `greenbelt_drift_windows_total`, `greenbelt_drift_dropped_samples_total` | counter | model, version |
//! | `greenbelt_labels_total` | counter | model, outcome (joined, unknown, mismatched, dropped) |
//! | `greenbelt_drift_routed_requests_total` | counter | deployment, slice (drifted, in_distribution), action (mirrored, routed, none) |
//! | `greenbelt_autoscaler_desired_replicas` | gauge | deployment |
//! | `greenbelt_autoscaler_current_replicas` | gauge | deployment |
//! | `greenbelt_autoscaler_observed_concurrency` | gauge | deployment |
//! | `greenbelt_autoscaler_observed_rps` | gauge | deployment |
//! | `greenbelt_autoscaler_observed_p99_seconds` | gauge | deployment |
//! | `greenbelt_autoscaler_stable_value` | gauge | deployment |
//! | `greenbelt_autoscaler_panic_value` | gauge | deployment |
//! | `greenbelt_autoscaler_panic_mode` | gauge | deployment |
//! | `greenbelt_autoscaler_latency_ratio` | gauge | deployment |
//! | `greenbelt_model_instances` | gauge | deployment, version |
//! | `greenbelt_model_instances_desired` | gauge | deployment, version |
//! | `greenbelt_model_sessions` | gauge | deployment, version |
//! | `greenbelt_batcher_concurrency` | gauge | deployment, version |
//! | `greenbelt_cost_dollars_total` | counter | model, version, deployment, resource (compute_cpu, request_cpu, gpu, memory, storage, egress; model `_overhead`/`_idle`: cpu, memory; deployment `_registry`/`_offline_store`/`_online_store`: what the stores hold, feature views under model `_features`) |
//! | `greenbelt_store_bytes` | gauge | store (registry, offline, online), model, version (a feature view for offline and online) |
//! | `greenbelt_store_items` | gauge | store, model, version (artifacts, files, keys) |
//! | `greenbelt_predictions_total` | counter | model, version, deployment |
//!
//! Requests for a model that is not loaded are counted under `model="_unknown"`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Outcome;

/// Latency buckets (seconds): 25 µs to ~26 s, doubling.
pub const LATENCY_BUCKETS: [f64; 21] = [
    0.000025, 0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256,
    0.0512, 0.1024, 0.2048, 0.4096, 0.8192, 1.6384, 3.2768, 6.5536, 13.1072, 26.2144,
];
/// Payload buckets (bytes): 64 B to 64 MiB, x4.
pub const BYTES_BUCKETS: [f64; 11] = [
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
/// Batch-size buckets (rows per runtime call).
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub const UNKNOWN_MODEL: &str = "_unknown";

/// Name and help of the cost counter (values from the cost ledger at
/// scrape time, `crate::cost::CostCollector`).
pub const COST_DOLLARS: (&str, &str) = (
    "greenbelt_cost_dollars",
    "Dollars spent by model version and resource under the [cost.prices] table (docs/cost.md); model _overhead is process CPU and memory no request was charged for, _idle what was provisioned and not used",
);
/// Name and help of the stores' bytes gauge (from the cost ledger).
pub const STORE_BYTES: (&str, &str) = (
    "greenbelt_store_bytes",
    "Bytes a store held at its last scan ([cost] storage_interval): store registry by model version, offline and online by feature view (model _features, version the view)",
);
/// Name and help of the stores' items gauge.
pub const STORE_ITEMS: (&str, &str) = (
    "greenbelt_store_items",
    "What a store held at its last scan, counted: registry artifacts, offline files, online keys",
);
/// Name and help of the predictions counter (rows answered).
pub const PREDICTIONS: (&str, &str) = (
    "greenbelt_predictions",
    "Predictions (rows) answered by successful requests, by model version: the denominator of $ per 1M predictions",
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub model: String,
    pub version: String,
    pub protocol: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnlyLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverloadLabels {
    pub model: String,
    pub reason: String,
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentVersionLabels {
    pub deployment: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub deployment: String,
    pub version: String,
    pub track: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub deployment: String,
    pub version: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgreementLabels {
    pub deployment: String,
    pub version: String,
    pub agreement: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub deployment: String,
    pub event: String,
}

/// Absolute score difference buckets: 1e-9 to 1, x10.
pub const DIFF_BUCKETS: [f64; 10] = [1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

#[derive(Clone)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

impl MetricConstructor<HistogramWithExemplars<TraceExemplar>> for Buckets {
    fn new_metric(&self) -> HistogramWithExemplars<TraceExemplar> {
        HistogramWithExemplars::new(self.0.iter().copied())
    }
}

/// The exemplar of a latency observation: the recorded trace it came from
/// (served in the OpenMetrics exposition only).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// The transport a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rest,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
        }
    }
}

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<VersionLabels, HistogramWithExemplars<TraceExemplar>, Buckets>,
    queue_duration: Family<VersionLabels, Histogram, Buckets>,
    compute_duration: Family<VersionLabels, Histogram, Buckets>,
    request_bytes: Family<VersionLabels, Histogram, Buckets>,
    response_bytes: Family<VersionLabels, Histogram, Buckets>,
    batch_size: Family<VersionLabels, Histogram, Buckets>,
    inflight: Family<ModelLabels, Gauge>,
    model_ready: Family<VersionLabels, Gauge>,
    load_duration: Family<VersionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    load_failures: Family<ModelLabels, Counter>,
    shed: Family<ReasonLabels, Counter>,
    concurrency_limit: Family<ModelLabels, Gauge>,
    overload_shed: Family<OverloadLabels, Counter>,
    route_requests: Family<RouteLabels, Counter>,
    shadow_requests: Family<ShadowLabels, Counter>,
    shadow_rows: Family<AgreementLabels, Counter>,
    shadow_abs_diff: Family<DeploymentVersionLabels, Histogram, Buckets>,
    shadow_duration: Family<DeploymentVersionLabels, Histogram, Buckets>,
    canary_weight: Family<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    rollout_events: Family<EventLabels, Counter>,
    /// `greenbelt_autoscaler_*`, in [`AUTOSCALER_GAUGES`] order.
    autoscaler: [Family<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>; 9],
    /// In-process scaling (`crate::instances`), in [`INSTANCE_GAUGES`] order.
    instances: [Family<DeploymentVersionLabels, Gauge>; 4],
    api_requests: Family<ApiLabels, Counter>,
    wire_request_bytes: Family<VersionLabels, Histogram, Buckets>,
    wire_response_bytes: Family<VersionLabels, Histogram, Buckets>,
    schema_changes: Family<VersionLabels, Counter>,
    api_duration: Family<RouteOnlyLabels, Histogram, Buckets>,
    /// Live drift, prediction quality and delayed labels (`crate::drift`).
    pub drift: DriftMetrics,
    /// Lines the request log wrote and dropped (`crate::reqlog`).
    pub request_log: crate::reqlog::LogCounters,
    /// Payload-log events written, dropped and failed (`crate::payloadlog`).
    pub payload_log: crate::payloadlog::PayloadCounters,
    /// The cost ledger: per-version meters, process usage, history.
    pub cost: Arc<crate::cost::Ledger>,
    /// Text blocks other subsystems keep current (the feature store's
    /// freshness gauges), appended to the exposition by name.
    external: std::sync::RwLock<std::collections::BTreeMap<&'static str, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let latency = || Family::new_with_constructor(Buckets(&LATENCY_BUCKETS));
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(Buckets(&LATENCY_BUCKETS)),
            queue_duration: latency(),
            compute_duration: latency(),
            request_bytes: Family::new_with_constructor(Buckets(&BYTES_BUCKETS)),
            response_bytes: Family::new_with_constructor(Buckets(&BYTES_BUCKETS)),
            batch_size: Family::new_with_constructor(Buckets(&BATCH_BUCKETS)),
            inflight: Family::default(),
            model_ready: Family::default(),
            load_duration: Family::default(),
            load_failures: Family::default(),
            shed: Family::default(),
            concurrency_limit: Family::default(),
            overload_shed: Family::default(),
            route_requests: Family::default(),
            shadow_requests: Family::default(),
            shadow_rows: Family::default(),
            shadow_abs_diff: Family::new_with_constructor(Buckets(&DIFF_BUCKETS)),
            shadow_duration: Family::new_with_constructor(Buckets(&LATENCY_BUCKETS)),
            canary_weight: Family::default(),
            external: Default::default(),
            rollout_events: Family::default(),
            autoscaler: Default::default(),
            instances: Default::default(),
            request_log: Default::default(),
            payload_log: Default::default(),
            api_requests: Family::default(),
            wire_request_bytes: Family::new_with_constructor(Buckets(&BYTES_BUCKETS)),
            wire_response_bytes: Family::new_with_constructor(Buckets(&BYTES_BUCKETS)),
            schema_changes: Family::default(),
            api_duration: Family::new_with_constructor(Buckets(&LATENCY_BUCKETS)),
            registry: Registry::default(),
            drift: DriftMetrics::default(),
            cost: Arc::default(),
        };
        m.drift.register(&mut registry);
        registry.register_collector(Box::new(crate::cost::CostCollector(m.cost.clone())));
        registry.register(
            "greenbelt_requests",
            "Inference requests by model version, protocol and outcome",
            m.requests.clone(),
        );
        registry.register(
            "greenbelt_request_duration_seconds",
            "Time from request decoded to response ready, inside the server",
            m.request_duration.clone(),
        );
        registry.register(
            "greenbelt_queue_duration_seconds",
            "Time a request waited for compute (batcher queue or compute pool)",
            m.queue_duration.clone(),
        );
        registry.register(
            "greenbelt_compute_duration_seconds",
            "Time the runtime spent on the call that served the request",
            m.compute_duration.clone(),
        );
        registry.register(
            "greenbelt_request_payload_bytes",
            "Raw tensor bytes of request inputs",
            m.request_bytes.clone(),
        );
        registry.register(
            "greenbelt_response_payload_bytes",
            "Raw tensor bytes of response outputs",
            m.response_bytes.clone(),
        );
        registry.register(
            "greenbelt_batch_size",
            "Rows per runtime call of the dynamic batcher",
            m.batch_size.clone(),
        );
        registry.register(
            "greenbelt_inflight_requests",
            "Inference requests being processed",
            m.inflight.clone(),
        );
        registry.register(
            "greenbelt_model_ready",
            "1 when the model version is loaded and serving",
            m.model_ready.clone(),
        );
        registry.register(
            "greenbelt_model_load_duration_seconds",
            "Time the last load of the model version took",
            m.load_duration.clone(),
        );
        registry.register(
            "greenbelt_model_load_failures",
            "Failed model loads",
            m.load_failures.clone(),
        );
        registry.register(
            "greenbelt_shed",
            "Requests refused before inference because a bound was reached",
            m.shed.clone(),
        );
        registry.register(
            "greenbelt_concurrency_limit",
            "The adaptive concurrency limit of a model (Gradient2; see [server.concurrency])",
            m.concurrency_limit.clone(),
        );
        registry.register(
            "greenbelt_overload_shed",
            "Requests shed for overload by model, reason (concurrency_limit, queue_time) and priority",
            m.overload_shed.clone(),
        );
        registry.register(
            "greenbelt_route_requests",
            "Requests a deployment routed, by the version and track that answered",
            m.route_requests.clone(),
        );
        registry.register(
            "greenbelt_shadow_requests",
            "Mirrored requests by shadow version and outcome (compared, error; dropped = mirror queue full; starved = the CPU stayed busy with live requests)",
            m.shadow_requests.clone(),
        );
        registry.register(
            "greenbelt_shadow_rows",
            "Rows compared between primary and shadow, by class agreement",
            m.shadow_rows.clone(),
        );
        registry.register(
            "greenbelt_shadow_abs_diff",
            "Largest absolute score difference between primary and shadow, per mirrored request",
            m.shadow_abs_diff.clone(),
        );
        registry.register(
            "greenbelt_shadow_duration_seconds",
            "Time the shadow version took for a mirrored request",
            m.shadow_duration.clone(),
        );
        registry.register(
            "greenbelt_rollout_canary_weight_ratio",
            "Share of a deployment's traffic routed to its canary (0..1)",
            m.canary_weight.clone(),
        );
        registry.register(
            "greenbelt_rollout_events",
            "Rollout transitions: started, promoted, aborted, paused, inconclusive, rolled_back",
            m.rollout_events.clone(),
        );
        for ((name, help), family) in AUTOSCALER_GAUGES.iter().zip(&m.autoscaler) {
            registry.register(*name, *help, family.clone());
        }
        for ((name, help), family) in INSTANCE_GAUGES.iter().zip(&m.instances) {
            registry.register(*name, *help, family.clone());
        }
        registry.register(
            "greenbelt_request_wire_bytes",
            "Size of successful inference requests on the wire (REST body, gRPC message)",
            m.wire_request_bytes.clone(),
        );
        registry.register(
            "greenbelt_response_wire_bytes",
            "Size of inference responses on the wire (REST body, gRPC message)",
            m.wire_response_bytes.clone(),
        );
        registry.register(
            "greenbelt_schema_changes",
            "Requests or answers whose payload schema departed from what the version had seen (see /admin/schema)",
            m.schema_changes.clone(),
        );
        registry.register(
            "greenbelt_http_requests",
            "Requests to the API outside inference (registry, features, admin, metadata), by route template, method and status",
            m.api_requests.clone(),
        );
        registry.register(
            "greenbelt_http_request_duration_seconds",
            "Time to answer an API request outside inference, by route template",
            m.api_duration.clone(),
        );
        registry.register(
            "greenbelt_request_log_lines",
            "Request-log lines written",
            m.request_log.written.clone(),
        );
        registry.register(
            "greenbelt_request_log_dropped",
            "Request-log lines dropped because the writer's queue ([telemetry] log_queue) was full",
            m.request_log.dropped.clone(),
        );
        registry.register(
            "greenbelt_payload_log_events",
            "Payload-log events (two per sampled request) written to the JSONL files or acknowledged by NATS JetStream",
            m.payload_log.events.clone(),
        );
        registry.register(
            "greenbelt_payload_log_dropped",
            "Payload-log events dropped because the queue ([telemetry.payload_log] queue) was full",
            m.payload_log.dropped.clone(),
        );
        registry.register(
            "greenbelt_payload_log_failed",
            "Payload-log events the sink could not write or publish (disk error, NATS unreachable, no ack in time)",
            m.payload_log.failed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if let Ok(external) = self.external.read()
            && !external.is_empty()
        {
            // Keep the terminating "# EOF" last.
            let eof = out.ends_with("# EOF\n");
            if eof {
                out.truncate(out.len() - "# EOF\n".len());
            }
            for text in external.values() {
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            if eof {
                out.push_str("# EOF\n");
            }
        }
        out
    }

    /// Every externally computed block, concatenated.
    pub fn external_text(&self) -> String {
        self.external
            .read()
            .map(|e| e.values().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Replace the named block of externally computed metrics (Prometheus
    /// text, `# HELP`/`# TYPE` included).
    pub fn set_external(&self, name: &'static str, text: String) {
        if let Ok(mut external) = self.external.write() {
            external.insert(name, text);
        }
    }

    /// Handles for one model version.
    pub fn version(&self, model: &str, version: &str) -> VersionMetrics {
        let labels = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        let requests = [Protocol::Rest, Protocol::Grpc].map(|p| {
            Outcome::ALL.map(|o| {
                self.requests
                    .get_or_create(&RequestLabels {
                        model: model.to_string(),
                        version: version.to_string(),
                        protocol: p.as_str().to_string(),
                        outcome: o.as_str().to_string(),
                    })
                    .clone()
            })
        });
        let wire_request = self.wire_request_bytes.get_or_create(&labels).clone();
        let wire_response = self.wire_response_bytes.get_or_create(&labels).clone();
        let schema_changes = self.schema_changes.get_or_create(&labels).clone();
        VersionMetrics {
            inner: Arc::new(VersionMetricsInner {
                requests,
                request_duration: self.request_duration.get_or_create(&labels).clone(),
                queue_duration: self.queue_duration.get_or_create(&labels).clone(),
                compute_duration: self.compute_duration.get_or_create(&labels).clone(),
                request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                response_bytes: self.response_bytes.get_or_create(&labels).clone(),
                batch_size: self.batch_size.get_or_create(&labels).clone(),
                inflight: self
                    .inflight
                    .get_or_create(&ModelLabels {
                        model: model.to_string(),
                    })
                    .clone(),
                live: crate::live::LiveStats::default(),
                route_family: self.route_requests.clone(),
                route_labels: labels,
                routed: Default::default(),
                stats: Default::default(),
                wire_request,
                wire_response,
                schema_changes,
                cost: self.cost.meter(model, version),
                batch_queue_shed: self
                    .shed
                    .get_or_create(&ReasonLabels {
                        reason: "batch_queue".into(),
                    })
                    .clone(),
            }),
        }
    }

    pub fn set_ready(&self, model: &str, version: &str, ready: bool) {
        let labels = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        self.model_ready
            .get_or_create(&labels)
            .set(i64::from(ready));
    }

    /// Remove every per-version series of a version that is no longer
    /// served (unloaded, or dropped by a reload), so dashboards and alerts
    /// do not see it as a live version that went quiet.
    pub fn forget_version(&self, model: &str, version: &str) {
        let labels = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        for p in [Protocol::Rest, Protocol::Grpc] {
            for o in Outcome::ALL {
                self.requests.remove(&RequestLabels {
                    model: model.to_string(),
                    version: version.to_string(),
                    protocol: p.as_str().to_string(),
                    outcome: o.as_str().to_string(),
                });
            }
        }
        self.request_duration.remove(&labels);
        for family in [
            &self.queue_duration,
            &self.compute_duration,
            &self.request_bytes,
            &self.response_bytes,
            &self.batch_size,
            &self.wire_request_bytes,
            &self.wire_response_bytes,
        ] {
            family.remove(&labels);
        }
        self.schema_changes.remove(&labels);
        self.cost.release(model, version);
        self.model_ready.remove(&labels);
        self.load_duration.remove(&labels);
        for track in crate::routing::Track::ALL {
            self.route_requests.remove(&RouteLabels {
                deployment: model.to_string(),
                version: version.to_string(),
                track: track.as_str().to_string(),
            });
        }
    }

    pub fn set_load_duration(&self, model: &str, version: &str, took: Duration) {
        let labels = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        self.load_duration
            .get_or_create(&labels)
            .set(took.as_secs_f64());
    }

    pub fn load_failed(&self, model: &str) {
        self.load_failures
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .inc();
    }

    pub fn shed(&self, reason: &'static str) {
        self.shed
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn set_concurrency_limit(&self, model: &str, limit: usize) {
        self.concurrency_limit
            .get_or_create(&ModelLabels {
                model: model.to_string(),
            })
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub fn forget_concurrency_limit(&self, model: &str) {
        self.concurrency_limit.remove(&ModelLabels {
            model: model.to_string(),
        });
    }

    /// One request shed for overload (also counted in `greenbelt_shed_total`).
    pub fn overload_shed(&self, model: &str, reason: &'static str, priority: &'static str) {
        self.overload_shed
            .get_or_create(&OverloadLabels {
                model: model.to_string(),
                reason: reason.to_string(),
                priority: priority.to_string(),
            })
            .inc();
    }

    /// Count a mirrored request: `compared`, `error` or `dropped`.
    pub fn shadow(&self, deployment: &str, version: &str, outcome: &'static str) {
        self.shadow_requests
            .get_or_create(&ShadowLabels {
                deployment: deployment.to_string(),
                version: version.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Record one compared mirrored request.
    pub fn shadow_compared(
        &self,
        deployment: &str,
        version: &str,
        rows_agree: u64,
        rows_disagree: u64,
        max_abs_diff: f64,
        took: Duration,
    ) {
        let labels = DeploymentVersionLabels {
            deployment: deployment.to_string(),
            version: version.to_string(),
        };
        for (agreement, n) in [("agree", rows_agree), ("disagree", rows_disagree)] {
            self.shadow_rows
                .get_or_create(&AgreementLabels {
                    deployment: deployment.to_string(),
                    version: version.to_string(),
                    agreement: agreement.to_string(),
                })
                .inc_by(n);
        }
        self.shadow_abs_diff
            .get_or_create(&labels)
            .observe(max_abs_diff);
        self.shadow_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn set_canary_weight(&self, deployment: &str, ratio: f64) {
        self.canary_weight
            .get_or_create(&DeploymentLabels {
                deployment: deployment.to_string(),
            })
            .set(ratio);
    }

    /// Publish one deployment's autoscaler evaluation.
    pub fn set_autoscaler(&self, deployment: &str, values: &AutoscalerGauges) {
        let labels = DeploymentLabels {
            deployment: deployment.to_string(),
        };
        let v = values;
        let p99 = v.observed_p99_seconds.unwrap_or(f64::NAN);
        let ratio = v.latency_ratio.unwrap_or(f64::NAN);
        let all = [
            f64::from(v.desired_replicas),
            f64::from(v.current_replicas),
            v.observed_concurrency,
            v.observed_rps,
            p99,
            v.stable_value,
            v.panic_value,
            if v.panic_mode { 1.0 } else { 0.0 },
            ratio,
        ];
        for (family, value) in self.autoscaler.iter().zip(all) {
            family.get_or_create(&labels).set(value);
        }
    }

    /// Drop a deployment's autoscaler series (no longer served).
    pub fn forget_autoscaler(&self, deployment: &str) {
        let labels = DeploymentLabels {
            deployment: deployment.to_string(),
        };
        for family in &self.autoscaler {
            family.remove(&labels);
        }
    }

    /// Publish one version's in-process scaling state (a `None` value
    /// has no series).
    pub fn set_instances(&self, deployment: &str, version: &str, values: &InstanceGauges) {
        let labels = DeploymentVersionLabels {
            deployment: deployment.to_string(),
            version: version.to_string(),
        };
        let all = [
            Some(values.instances),
            Some(values.desired as usize),
            values.sessions,
            values.batch_concurrency,
        ];
        for (family, value) in self.instances.iter().zip(all) {
            match value {
                Some(v) => {
                    family
                        .get_or_create(&labels)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// Drop a version's in-process scaling series (no longer served).
    pub fn forget_instances(&self, deployment: &str, version: &str) {
        let labels = DeploymentVersionLabels {
            deployment: deployment.to_string(),
            version: version.to_string(),
        };
        for family in &self.instances {
            family.remove(&labels);
        }
    }

    pub fn rollout_event(&self, deployment: &str, event: &str) {
        self.rollout_events
            .get_or_create(&EventLabels {
                deployment: deployment.to_string(),
                event: event.to_string(),
            })
            .inc();
    }

    /// Count one non-inference API request (`route` is the matched route
    /// template, so label values are bounded).
    pub fn api_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.api_requests
            .get_or_create(&ApiLabels {
                route: route.to_string(),
                method: method.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.api_duration
            .get_or_create(&RouteOnlyLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Count a request that failed before a model version was resolved.
    pub fn unresolved(&self, protocol: Protocol, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                model: UNKNOWN_MODEL.to_string(),
                version: String::new(),
                protocol: protocol.as_str().to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }
}

/// Name and help of each autoscaler gauge (values in [`AutoscalerGauges`]).
pub const AUTOSCALER_GAUGES: [(&str, &str); 9] = [
    (
        "greenbelt_autoscaler_desired_replicas",
        "Replicas the autoscaler recommends for the deployment (Knative KPA or HPA v2 on the load metric, max with the p99/SLO metric; see [autoscale])",
    ),
    (
        "greenbelt_autoscaler_current_replicas",
        "Replicas the recommendation started from ([autoscale] replicas)",
    ),
    (
        "greenbelt_autoscaler_observed_concurrency",
        "Requests in flight in this process, averaged over the last evaluation interval",
    ),
    (
        "greenbelt_autoscaler_observed_rps",
        "Requests per second arriving at this process over the last evaluation interval",
    ),
    (
        "greenbelt_autoscaler_observed_p99_seconds",
        "p99 latency of this process's answers over the last evaluation interval (NaN: too few)",
    ),
    (
        "greenbelt_autoscaler_stable_value",
        "The load metric averaged over the stable window, deployment total",
    ),
    (
        "greenbelt_autoscaler_panic_value",
        "The load metric averaged over the panic window, deployment total",
    ),
    (
        "greenbelt_autoscaler_panic_mode",
        "1 while the autoscaler is in Knative's panic mode",
    ),
    (
        "greenbelt_autoscaler_latency_ratio",
        "p99 over the deployment's latency SLO (NaN: no SLO or too few answers)",
    ),
];

/// Name and help of each in-process scaling gauge (values in
/// [`InstanceGauges`]).
pub const INSTANCE_GAUGES: [(&str, &str); 4] = [
    (
        "greenbelt_model_instances",
        "Model instances in service for the version (in-process scaling, [deployments.instances])",
    ),
    (
        "greenbelt_model_instances_desired",
        "Instances the recommender asks for the version (KPA or HPA on requests in flight per instance)",
    ),
    (
        "greenbelt_model_sessions",
        "ONNX Runtime sessions loaded for the version",
    ),
    (
        "greenbelt_batcher_concurrency",
        "Batches of the version that may run at once (one per instance)",
    ),
];

/// One evaluation's values for the in-process scaling gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceGauges {
    pub instances: usize,
    pub desired: u32,
    /// `None`: the model is one thread-safe instance (no sessions).
    pub sessions: Option<usize>,
    /// `None`: the version has no batcher.
    pub batch_concurrency: Option<usize>,
}

/// One evaluation's values for the `greenbelt_autoscaler_*` gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AutoscalerGauges {
    pub desired_replicas: u32,
    pub current_replicas: u32,
    pub observed_concurrency: f64,
    pub observed_rps: f64,
    pub observed_p99_seconds: Option<f64>,
    pub stable_value: f64,
    pub panic_value: f64,
    pub panic_mode: bool,
    pub latency_ratio: Option<f64>,
}

struct VersionMetricsInner {
    requests: [[Counter; 5]; 2],
    request_duration: HistogramWithExemplars<TraceExemplar>,
    queue_duration: Histogram,
    compute_duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
    batch_size: Histogram,
    inflight: Gauge,
    live: crate::live::LiveStats,
    /// `greenbelt_route_requests_total` handles per track, made on first use
    /// (a version outside any deployment never creates the series).
    route_family: Family<RouteLabels, Counter>,
    route_labels: VersionLabels,
    routed: [std::sync::OnceLock<Counter>; 4],
    /// Triton-shaped statistics (`/v2/models/{m}/stats`).
    stats: crate::stats::VersionStats,
    /// `greenbelt_shed_total{reason="batch_queue"}`.
    batch_queue_shed: Counter,
    wire_request: Histogram,
    wire_response: Histogram,
    schema_changes: Counter,
    /// The version's cost meter (shared with the ledger).
    cost: Arc<crate::cost::VersionMeter>,
}

/// Pre-resolved metric handles of one model version; cheap to clone.
#[derive(Clone)]
pub struct VersionMetrics {
    inner: Arc<VersionMetricsInner>,
}

impl VersionMetrics {
    /// Count one request and its latency; `exemplar` is the trace id of a
    /// recorded trace.
    pub fn request(
        &self,
        protocol: Protocol,
        outcome: Outcome,
        took: Duration,
        exemplar: Option<String>,
    ) {
        let p = match protocol {
            Protocol::Rest => 0,
            Protocol::Grpc => 1,
        };
        let o = Outcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        if let Some(c) = self.inner.requests.get(p).and_then(|row| row.get(o)) {
            c.inc();
        }
        self.inner.request_duration.observe(
            took.as_secs_f64(),
            exemplar.map(|trace_id| TraceExemplar { trace_id }),
            None,
        );
        self.inner.live.record(outcome, took);
        self.inner.stats.request(outcome == Outcome::Success, took);
        self.inner.cost.wall(took);
    }

    /// The version's cost meter.
    pub fn cost(&self) -> &crate::cost::VersionMeter {
        &self.inner.cost
    }

    /// Count a request its deployment routed here, on `track`. Allocates
    /// the labels once per track, then it is one atomic add.
    pub fn routed(&self, track: crate::routing::Track) {
        let i = crate::routing::Track::ALL
            .iter()
            .position(|t| *t == track)
            .unwrap_or(0);
        let Some(slot) = self.inner.routed.get(i) else {
            return;
        };
        slot.get_or_init(|| {
            self.inner
                .route_family
                .get_or_create(&RouteLabels {
                    deployment: self.inner.route_labels.model.clone(),
                    version: self.inner.route_labels.version.clone(),
                    track: track.as_str().to_string(),
                })
                .clone()
        })
        .inc();
    }

    /// Cumulative live counts, for windowed release analysis.
    pub fn live(&self) -> crate::live::LiveSnapshot {
        self.inner.live.snapshot()
    }

    pub fn queue(&self, took: Duration) {
        self.inner.queue_duration.observe(took.as_secs_f64());
        self.inner.stats.queue(took);
    }

    pub fn compute(&self, took: Duration) {
        self.inner.compute_duration.observe(took.as_secs_f64());
        self.inner.stats.compute(took);
    }

    /// Requests so far by outcome, both protocols together.
    pub fn outcome_counts(&self) -> [(Outcome, u64); 5] {
        Outcome::ALL.map(|o| {
            let i = Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0);
            let n = self
                .inner
                .requests
                .iter()
                .filter_map(|row| row.get(i))
                .map(Counter::get)
                .sum();
            (o, n)
        })
    }

    /// A request refused because this version's batch queue was full.
    pub fn shed_batch_queue(&self) {
        self.inner.batch_queue_shed.inc();
    }

    /// A successful request's size on the wire, and its answer's.
    pub fn wire(&self, request_bytes: usize, response_bytes: usize) {
        self.inner.wire_request.observe(request_bytes as f64);
        self.inner.wire_response.observe(response_bytes as f64);
        self.inner.cost.wire(request_bytes, response_bytes);
    }

    /// The counter of this version's schema-change events.
    pub fn schema_counter(&self) -> Counter {
        self.inner.schema_changes.clone()
    }

    /// A successful request's rows.
    pub fn rows(&self, rows: usize) {
        self.inner.stats.rows(rows);
    }

    /// One runtime call: `rows` rows (a whole dynamic batch) in `took`.
    pub fn execution(&self, rows: usize, took: Duration) {
        self.inner.stats.execution(rows, took);
    }

    /// This version's statistics in Triton's shape.
    pub fn stats(&self, name: &str, version: &str) -> crate::stats::ModelStat {
        self.inner.stats.snapshot(name, version)
    }

    pub fn payload(&self, request_bytes: usize, response_bytes: usize) {
        self.inner.request_bytes.observe(request_bytes as f64);
        self.inner.response_bytes.observe(response_bytes as f64);
    }

    pub fn batch(&self, rows: usize) {
        self.inner.batch_size.observe(rows as f64);
    }

    /// Requests of this version's model in flight now.
    pub fn inflight_now(&self) -> i64 {
        self.inner.inflight.get()
    }

    /// Count a request in flight until the guard drops.
    pub fn inflight(&self) -> InflightGuard {
        self.inner.inflight.inc();
        InflightGuard(self.inner.inflight.clone())
    }
}

pub struct InflightGuard(Gauge);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::new();
        let v = m.version("fraud", "1");
        v.request(
            Protocol::Rest,
            Outcome::Success,
            Duration::from_millis(2),
            None,
        );
        v.payload(80, 16);
        m.set_ready("fraud", "1", true);
        m.shed("inflight");
        let text = m.encode();
        m.version("fraud", "2")
            .request(Protocol::Grpc, Outcome::Timeout, Duration::ZERO, None);
        m.set_ready("fraud", "2", true);
        m.forget_version("fraud", "2");
        let after = m.encode();
        assert!(!after.contains("version=\"2\""), "{after}");
        assert!(after.contains("greenbelt_model_ready{model=\"fraud\",version=\"1\"} 1"));
        for name in [
            "greenbelt_requests_total{model=\"fraud\",version=\"1\",protocol=\"rest\",outcome=\"success\"} 1",
            "greenbelt_request_duration_seconds_bucket",
            "greenbelt_request_payload_bytes_sum{model=\"fraud\",version=\"1\"} 80",
            "greenbelt_model_ready{model=\"fraud\",version=\"1\"} 1",
            "greenbelt_shed_total{reason=\"inflight\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeatureLabels {
    pub model: String,
    pub version: String,
    pub feature: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelOutcomeLabels {
    pub model: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftRouteLabels {
    pub deployment: String,
    pub slice: String,
    pub action: String,
}

/// Name and help of each per-feature drift gauge, in [`FeatureGauge`] order.
pub const DRIFT_FEATURE_GAUGES: [(&str, &str); 6] = [
    (
        "greenbelt_drift_psi",
        "PSI of the feature in the last closed window against the version's reference (10 reference-decile bins)",
    ),
    (
        "greenbelt_drift_ks_statistic",
        "Two-sample KS statistic of the feature in the last closed window (from the 100-quantile sketch; see docs/drift.md)",
    ),
    (
        "greenbelt_drift_ks_pvalue",
        "KS p-value of the feature in the last closed window (scipy's ks_2samp rule)",
    ),
    (
        "greenbelt_drift_chi2_pvalue",
        "Chi-square p-value of a categorical feature in the last closed window",
    ),
    (
        "greenbelt_drift_jensenshannon",
        "Jensen-Shannon distance (natural log) of a categorical feature in the last closed window",
    ),
    (
        "greenbelt_drift_missing_ratio",
        "Share of the feature's values that were missing (NaN, empty) in the last closed window",
    ),
];

/// Index into [`DRIFT_FEATURE_GAUGES`].
#[derive(Debug, Clone, Copy)]
pub enum FeatureGauge {
    Psi,
    KsStatistic,
    KsPvalue,
    Chi2Pvalue,
    JensenShannon,
    MissingRatio,
}

/// Name and help of each per-version drift and quality gauge, in [`VersionGauge`] order.
pub const DRIFT_VERSION_GAUGES: [(&str, &str); 12] = [
    (
        "greenbelt_drift_drifted_features",
        "Features over the drift thresholds ([drift] psi_threshold, ks_pvalue) in the last closed window",
    ),
    (
        "greenbelt_drift_window_requests",
        "Requests counted into the last closed window",
    ),
    (
        "greenbelt_prediction_drift_psi",
        "PSI of the predictions (score, class or value) in the last closed window against the holdout's",
    ),
    (
        "greenbelt_prediction_drift_ks_statistic",
        "KS statistic of numeric predictions in the last closed window against the holdout's",
    ),
    (
        "greenbelt_prediction_confidence_mean",
        "Mean largest class probability of the answers in the last closed window",
    ),
    (
        "greenbelt_prediction_entropy_mean",
        "Mean entropy (nats) of the class probabilities in the last closed window",
    ),
    (
        "greenbelt_features_not_present_ratio",
        "Share of feature-store cells that were not PRESENT (missing, stale, defaulted) in the last closed window",
    ),
    (
        "greenbelt_model_accuracy",
        "Accuracy over the version's last labelled predictions ([drift.labels] window)",
    ),
    (
        "greenbelt_model_auc",
        "ROC AUC over the version's last labelled predictions (binary labels)",
    ),
    (
        "greenbelt_model_rmse",
        "RMSE over the version's last labelled predictions (regression)",
    ),
    (
        "greenbelt_model_labelled_predictions",
        "Labelled predictions the quality metrics are computed over",
    ),
    (
        "greenbelt_model_mae",
        "Mean absolute error over the version's last labelled predictions (regression)",
    ),
];

/// Index into [`DRIFT_VERSION_GAUGES`].
#[derive(Debug, Clone, Copy)]
pub enum VersionGauge {
    DriftedFeatures,
    WindowRequests,
    PredictionPsi,
    PredictionKs,
    ConfidenceMean,
    EntropyMean,
    NotPresentRatio,
    Accuracy,
    Auc,
    Rmse,
    Labelled,
    Mae,
}

/// The live drift monitor's, the prediction-quality proxies' and the
/// delayed labels' metrics.
#[derive(Default)]
pub struct DriftMetrics {
    feature: [Family<FeatureLabels, FloatGauge>; 6],
    version: [Family<VersionLabels, FloatGauge>; 12],
    windows: Family<VersionLabels, Counter>,
    dropped: Family<VersionLabels, Counter>,
    labels: Family<LabelOutcomeLabels, Counter>,
    routed: Family<DriftRouteLabels, Counter>,
}

impl DriftMetrics {
    fn register(&self, registry: &mut Registry) {
        for ((name, help), family) in DRIFT_FEATURE_GAUGES.iter().zip(&self.feature) {
            registry.register(*name, *help, family.clone());
        }
        for ((name, help), family) in DRIFT_VERSION_GAUGES.iter().zip(&self.version) {
            registry.register(*name, *help, family.clone());
        }
        registry.register(
            "greenbelt_drift_windows",
            "Drift windows closed and compared with the version's reference",
            self.windows.clone(),
        );
        registry.register(
            "greenbelt_drift_dropped_samples",
            "Requests not counted into a drift window because every shard was busy",
            self.dropped.clone(),
        );
        registry.register(
            "greenbelt_labels",
            "Delayed labels received: joined with a recorded prediction, unknown id (never seen, evicted, expired), row-count mismatch, or predictions dropped while recording",
            self.labels.clone(),
        );
        registry.register(
            "greenbelt_drift_routed_requests",
            "Deployment requests checked by drift routing, by slice and what was done with them",
            self.routed.clone(),
        );
    }

    /// Set (Some) or remove (None) one feature's gauge.
    pub fn set_feature(
        &self,
        model: &str,
        version: &str,
        feature: &str,
        gauge: FeatureGauge,
        value: Option<f64>,
    ) {
        let labels = FeatureLabels {
            model: model.to_string(),
            version: version.to_string(),
            feature: feature.to_string(),
        };
        if let Some(family) = self.feature.get(gauge as usize) {
            match value {
                Some(v) => {
                    family.get_or_create(&labels).set(v);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// Set (Some) or remove (None) one version gauge.
    pub fn set_version(&self, model: &str, version: &str, gauge: VersionGauge, value: Option<f64>) {
        let labels = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        if let Some(family) = self.version.get(gauge as usize) {
            match value {
                Some(v) => {
                    family.get_or_create(&labels).set(v);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// One window closed; `dropped` more samples were dropped since the last.
    pub fn window_closed(&self, model: &str, version: &str, dropped: u64) {
        let labels = VersionLabels {
            model: model.to_string(),
            version: version.to_string(),
        };
        self.windows.get_or_create(&labels).inc();
        self.dropped.get_or_create(&labels).inc_by(dropped);
    }

    pub fn labels(&self, model: &str, outcome: &str, n: u64) {
        self.labels
            .get_or_create(&LabelOutcomeLabels {
                model: model.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(n);
    }

    pub fn routed(&self, deployment: &str, slice: &str, action: &str) {
        self.routed
            .get_or_create(&DriftRouteLabels {
                deployment: deployment.to_string(),
                slice: slice.to_string(),
                action: action.to_string(),
            })
            .inc();
    }
}
