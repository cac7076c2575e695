//! What keeps online reads answering when the store fails: a circuit
//! breaker around reads and one around writes (resilience4j semantics, see
//! `greenbelt_core::breaker`), the stale-while-error cache of the last
//! value read per entity key (for `fallback = "last_value"`), and the
//! counters of degraded reads. It also renders them as Prometheus text and
//! as the JSON of `GET /features/online/status`. The fallback decisions
//! themselves are made in `service`; this module owns the state.
//!
//! Metrics (all here, nowhere else):
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `greenbelt_feature_store_breaker_state` | gauge (0 closed, 1 open, 2 half-open) | store, op (read, write) |
//! | `greenbelt_feature_store_breaker_calls_total` | counter | store, op, outcome (successful, failed, rejected) |
//! | `greenbelt_feature_store_breaker_opened_total` | counter | store, op |
//! | `greenbelt_feature_degraded_reads_total` | counter | service |
//! | `greenbelt_feature_fallback_values_total` | counter | service, status (stale, default) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use greenbelt_core::breaker::{BreakerConfig, SharedBreaker, Snapshot};
use greenbelt_core::retry::{RetryBudget, RetryBudgetConfig};
use moka::future::Cache;
use serde::Serialize;
use tokio::time::Instant;

use crate::defs::{Definitions, Fallback};

/// A write under the breaker may take this long (a materialization batch
/// is many pipelines); only a write that runs out of it is slow.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A value as last read from the store, and when.
#[derive(Debug)]
pub(crate) struct LastValue<T> {
    pub(crate) value: Arc<T>,
    pub(crate) read_at: Instant,
}

#[derive(Debug, Default)]
struct ServiceCounts {
    degraded_reads: AtomicU64,
    stale: AtomicU64,
    default: AtomicU64,
}

/// Breakers, last values and counters of one online service.
pub(crate) struct Resilience<T> {
    pub(crate) read: SharedBreaker,
    pub(crate) write: SharedBreaker,
    /// Reads that fail fast (a dropped connection) are retried once, within
    /// this budget (10% of reads, plus one a second).
    pub(crate) retry: Arc<RetryBudget>,
    pub(crate) timeout: Duration,
    /// Present when some service falls back to its last value.
    pub(crate) last: Option<Cache<String, Arc<LastValue<T>>>>,
    /// Per feature service (a bounded label set, from the definitions).
    counts: BTreeMap<String, ServiceCounts>,
}

impl<T: Send + Sync + 'static> Resilience<T> {
    pub(crate) fn new(defs: &Definitions) -> Resilience<T> {
        let settings = &defs.online;
        let write = BreakerConfig {
            // A large write is slow by nature; only one that runs out of
            // its time counts as slow (and it fails too).
            slow_call_duration: WRITE_TIMEOUT,
            ..settings.breaker.clone()
        };
        let wants_last = defs
            .services
            .values()
            .any(|s| s.fallback == Fallback::LastValue);
        Resilience {
            read: SharedBreaker::new("online_read", settings.breaker.clone()),
            write: SharedBreaker::new("online_write", write),
            retry: Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
            timeout: settings.timeout,
            last: wants_last.then(|| {
                Cache::builder()
                    .max_capacity(settings.stale_cache_entries)
                    .build()
            }),
            counts: defs
                .services
                .keys()
                .map(|k| (k.clone(), ServiceCounts::default()))
                .collect(),
        }
    }

    /// Count a read of `service` that served `stale` last values and
    /// `defaults` defaults.
    pub(crate) fn degraded(&self, service: &str, stale: u64, defaults: u64) {
        if let Some(c) = self.counts.get(service) {
            c.degraded_reads.fetch_add(1, Ordering::Relaxed);
            c.stale.fetch_add(stale, Ordering::Relaxed);
            c.default.fetch_add(defaults, Ordering::Relaxed);
        }
    }

    pub(crate) fn status(&self) -> OnlineStatus {
        OnlineStatus {
            read: self.read.snapshot(),
            write: self.write.snapshot(),
            read_timeout_seconds: self.timeout.as_secs_f64(),
            last_values: self.last.as_ref().map(Cache::entry_count),
            degraded_reads: self
                .counts
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        DegradedCounts {
                            reads: c.degraded_reads.load(Ordering::Relaxed),
                            stale_values: c.stale.load(Ordering::Relaxed),
                            default_values: c.default.load(Ordering::Relaxed),
                        },
                    )
                })
                .collect(),
            stale_views: Vec::new(),
        }
    }
}

/// Degraded-read counters of one feature service.
#[derive(Debug, Clone, Serialize)]
pub struct DegradedCounts {
    pub reads: u64,
    pub stale_values: u64,
    pub default_values: u64,
}

/// `GET /features/online/status`.
#[derive(Debug, Clone, Serialize)]
pub struct OnlineStatus {
    /// The breaker around reads.
    pub read: Snapshot,
    /// The breaker around writes.
    pub write: Snapshot,
    pub read_timeout_seconds: f64,
    /// Entity keys with a last value kept (when a service uses `last_value`).
    pub last_values: Option<u64>,
    /// Per feature service.
    pub degraded_reads: BTreeMap<String, DegradedCounts>,
    /// Views past their freshness SLA, as the last freshness check found
    /// them: their cells are served flagged (`STALE` or `DEFAULT`).
    pub stale_views: Vec<super::service::StaleView>,
}

impl OnlineStatus {
    /// Prometheus text exposition (`# HELP`/`# TYPE` included).
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        let ops = [("read", &self.read), ("write", &self.write)];
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "greenbelt_feature_store_breaker_state",
            "gauge",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        );
        for (op, s) in ops {
            let _ = writeln!(
                out,
                "greenbelt_feature_store_breaker_state{{store=\"online\",op=\"{op}\"}} {}",
                s.state.as_gauge()
            );
        }
        head(
            &mut out,
            "greenbelt_feature_store_breaker_calls",
            "counter",
            "Calls through the breaker by outcome (rejected: refused while open).",
        );
        for (op, s) in ops {
            for (outcome, n) in [
                ("successful", s.counts.successful),
                ("failed", s.counts.failed),
                ("rejected", s.counts.rejected),
            ] {
                let _ = writeln!(
                    out,
                    "greenbelt_feature_store_breaker_calls_total{{store=\"online\",op=\"{op}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        head(
            &mut out,
            "greenbelt_feature_store_breaker_opened",
            "counter",
            "Times the breaker opened.",
        );
        for (op, s) in ops {
            let _ = writeln!(
                out,
                "greenbelt_feature_store_breaker_opened_total{{store=\"online\",op=\"{op}\"}} {}",
                s.counts.opened
            );
        }
        head(
            &mut out,
            "greenbelt_feature_degraded_reads",
            "counter",
            "Reads of a feature service answered with fallbacks (STALE or DEFAULT values).",
        );
        for (svc, c) in &self.degraded_reads {
            let _ = writeln!(
                out,
                "greenbelt_feature_degraded_reads_total{{service=\"{svc}\"}} {}",
                c.reads
            );
        }
        head(
            &mut out,
            "greenbelt_feature_fallback_values",
            "counter",
            "Feature values served from a fallback, by status.",
        );
        for (svc, c) in &self.degraded_reads {
            for (status, n) in [("stale", c.stale_values), ("default", c.default_values)] {
                let _ = writeln!(
                    out,
                    "greenbelt_feature_fallback_values_total{{service=\"{svc}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out
    }
}
