//! Cost accounting: what each model version costs. The request path meters
//! (`meter.rs`: compute CPU, sampled request CPU, wall time, bytes,
//! feature reads) into per-version atomics; loaded versions hold memory and
//! storage for as long as they are loaded; the [`Ledger`] turns that and
//! the process's own CPU and memory into a priced [`Snapshot`] on demand
//! (`/metrics`, `GET /admin/cost`) and keeps a thinned history of them for
//! reports over a past window and for budgets (`budget.rs`). The maths is
//! `greenbelt_core::cost`; docs/cost.md explains the model and its limits.

pub mod budget;
pub mod meter;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use greenbelt_core::cost::{
    EgressClass, GIB, GroupBy, Held, History, Prices, Process, Report, Snapshot, Store, Usage,
    report,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

pub use meter::{RequestCpu, VersionMeter};

/// `[cost]` in greenbelt.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// The price table (`[cost.prices]`); defaults: OpenCost's.
    pub prices: Prices,
    /// Where answers go, for the egress price: zone, region or internet.
    pub egress_class: EgressClass,
    /// CPU cores the server is provisioned with (e.g. its Kubernetes CPU
    /// request); set, the part of them it did not use is reported as idle.
    pub provisioned_cores: Option<f64>,
    /// Memory the server is provisioned with, GiB (idle like the cores).
    pub provisioned_memory_gib: Option<f64>,
    /// How often the server records a snapshot (for reports over a past
    /// window) and evaluates its `[[budget]]`s (humantime).
    pub interval: String,
    /// How often what the stores hold is measured: the registry's
    /// artifacts, the feature store's offline files and online keys
    /// (humantime; each pass lists them, so not too often).
    pub storage_interval: String,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            prices: Prices::default(),
            egress_class: EgressClass::default(),
            provisioned_cores: None,
            provisioned_memory_gib: None,
            interval: "15s".into(),
            storage_interval: "5m".into(),
        }
    }
}

impl CostConfig {
    pub fn interval(&self) -> Result<Duration, String> {
        crate::config::interval("[cost] interval", &self.interval, "15s")
    }

    pub fn storage_interval(&self) -> Result<Duration, String> {
        crate::config::interval("[cost] storage_interval", &self.storage_interval, "5m")
    }

    pub fn validate(&self) -> Result<(), String> {
        self.prices.validate()?;
        self.interval()?;
        self.storage_interval()?;
        for (name, v) in [
            ("provisioned_cores", self.provisioned_cores),
            ("provisioned_memory_gib", self.provisioned_memory_gib),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(format!("[cost] {name} must be > 0, got {v}"));
            }
        }
        Ok(())
    }
}

/// What the ledger prices with, from the config.
#[derive(Debug, Clone, Default)]
struct Settings {
    prices: Prices,
    egress_class: EgressClass,
    provisioned_cores: f64,
    provisioned_memory_gib: f64,
    /// Served name → registry model, for deployments whose model differs.
    models: HashMap<String, String>,
}

/// The process's resident memory, integrated between snapshots.
#[derive(Debug)]
struct Resident {
    last: Instant,
    byte_seconds: f64,
}

/// One holding of a store, as a scan measured it: `model`/`version` (a
/// registry version), or [`greenbelt_core::cost::FEATURES`]/view.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    pub model: String,
    pub version: String,
    pub bytes: u64,
    /// Artifacts, files or keys.
    pub items: u64,
}

/// A holding between scans: its bytes are taken as constant from one scan
/// to the next, and integrated.
#[derive(Debug)]
struct HeldMeter {
    held: Held,
    since: Instant,
    gib_hours: f64,
}

impl HeldMeter {
    fn gib_hours(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.since).as_secs_f64();
        self.gib_hours + self.held.bytes / GIB * dt / 3600.0
    }
}

/// Every version's meter, the process's usage, and the history of
/// snapshots. One per server (in [`crate::metrics::Metrics`]).
#[derive(Debug)]
pub struct Ledger {
    started: Instant,
    meters: RwLock<BTreeMap<(String, String), Arc<VersionMeter>>>,
    /// (store, model, version) → what the store held at its last scan.
    held: Mutex<BTreeMap<(Store, String, String), HeldMeter>>,
    settings: RwLock<Settings>,
    resident: Mutex<Resident>,
    history: Mutex<History>,
}

impl Default for Ledger {
    fn default() -> Self {
        let now = Instant::now();
        Ledger {
            started: now,
            meters: Default::default(),
            held: Default::default(),
            settings: Default::default(),
            resident: Mutex::new(Resident {
                last: now,
                byte_seconds: 0.0,
            }),
            history: Default::default(),
        }
    }
}

impl Ledger {
    /// Prices, egress class and provisioning from the config; deployments
    /// name their registry model.
    pub fn configure(&self, config: &crate::Config) {
        let models = config
            .deployments
            .iter()
            .filter_map(|d| d.model.clone().map(|m| (d.name.clone(), m)))
            .collect();
        if let Ok(mut s) = self.settings.write() {
            *s = Settings {
                prices: config.cost.prices.clone(),
                egress_class: config.cost.egress_class,
                provisioned_cores: config.cost.provisioned_cores.unwrap_or(0.0),
                provisioned_memory_gib: config.cost.provisioned_memory_gib.unwrap_or(0.0),
                models,
            };
        }
    }

    /// The meter of `served`/`version` (made on first use, kept after the
    /// version is unloaded so its cost stays in the totals).
    pub fn meter(&self, served: &str, version: &str) -> Arc<VersionMeter> {
        let key = (served.to_string(), version.to_string());
        if let Some(m) = self.meters.read().ok().and_then(|m| m.get(&key).cloned()) {
            return m;
        }
        match self.meters.write() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// A version stopped being served: it holds nothing from now.
    pub fn release(&self, served: &str, version: &str) {
        let key = (served.to_string(), version.to_string());
        if let Some(m) = self.meters.read().ok().and_then(|m| m.get(&key).cloned()) {
            m.release(Instant::now());
        }
    }

    /// A scan of `store` measured `now_held` (everything the store holds
    /// now: a holding missing from it holds nothing from now on, and keeps
    /// what it cost so far). `in_memory`: the store keeps it in RAM.
    pub fn held(&self, store: Store, in_memory: bool, now_held: Vec<Holding>) {
        let now = Instant::now();
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        for ((s, _, _), m) in held.iter_mut() {
            if *s == store {
                m.gib_hours = m.gib_hours(now);
                m.since = now;
                m.held.bytes = 0.0;
                m.held.items = 0;
            }
        }
        for h in now_held {
            let m = held
                .entry((store, h.model, h.version))
                .or_insert_with(|| HeldMeter {
                    held: Held {
                        store,
                        bytes: 0.0,
                        items: 0,
                        in_memory,
                    },
                    since: now,
                    gib_hours: 0.0,
                });
            m.held.bytes = h.bytes as f64;
            m.held.items = h.items;
            m.held.in_memory = in_memory;
        }
    }

    /// What the stores hold now, with the GiB-hours held so far.
    fn holdings(&self, now: Instant) -> Vec<(String, String, Held, Usage)> {
        let Ok(held) = self.held.lock() else {
            return Vec::new();
        };
        held.iter()
            .map(|((_, model, version), m)| {
                let gib_hours = m.gib_hours(now);
                let usage = if m.held.in_memory {
                    Usage {
                        memory_gib_hours: gib_hours,
                        ..Usage::default()
                    }
                } else {
                    Usage {
                        storage_gib_hours: gib_hours,
                        ..Usage::default()
                    }
                };
                (model.clone(), version.clone(), m.held, usage)
            })
            .collect()
    }

    /// (served name, version) of the versions loaded now.
    pub fn loaded(&self) -> std::collections::HashSet<(String, String)> {
        self.meters
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, meter)| meter.loaded())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Everything so far, priced.
    pub fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let at = now.saturating_duration_since(self.started).as_secs_f64();
        let settings = self.settings.read().map(|s| s.clone()).unwrap_or_default();
        let rows: Vec<(String, String, String, Usage)> = self
            .meters
            .read()
            .map(|m| {
                m.iter()
                    .map(|((served, version), meter)| {
                        let model = settings.models.get(served).unwrap_or(served).clone();
                        (model, version.clone(), served.clone(), meter.usage(now))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rss = meter::rss_bytes();
        let resident = self.resident.lock().map_or(0.0, |mut r| {
            let dt = now.saturating_duration_since(r.last).as_secs_f64();
            r.byte_seconds += rss as f64 * dt;
            r.last = now;
            r.byte_seconds
        });
        let process = Process {
            cpu_seconds: meter::process_cpu().as_secs_f64(),
            memory_gib_hours: resident / GIB / 3600.0,
            rss_bytes: rss as f64,
            uptime_seconds: at,
            provisioned_cpu_seconds: settings.provisioned_cores * at,
            provisioned_memory_gib_hours: settings.provisioned_memory_gib * at / 3600.0,
        };
        Snapshot::new(at, settings.prices, settings.egress_class, rows, process)
            .with_held(self.holdings(now))
    }

    /// Take a snapshot and keep it in the history.
    pub fn record(&self) -> Snapshot {
        let s = self.snapshot();
        if let Ok(mut h) = self.history.lock() {
            h.push(s.clone());
        }
        s
    }

    /// The report over the last `since` (everything since start when
    /// None or when the history is shorter), grouped `by`, with the
    /// window's first half for the drivers' trend.
    pub fn report(&self, since: Option<Duration>, by: GroupBy) -> (Report, Snapshot) {
        let now = self.snapshot();
        let Ok(history) = self.history.lock() else {
            return (report(&now, by, None), now);
        };
        // A window longer than the uptime is everything since start.
        let since = since.filter(|s| s.as_secs_f64() < now.at_seconds);
        let start = since.and_then(|s| {
            history
                .at_or_before(now.at_seconds - s.as_secs_f64())
                .filter(|p| p.at_seconds < now.at_seconds)
        });
        let window = start.map_or_else(|| now.clone(), |s| now.minus(s));
        let mid_at = now.at_seconds - window.at_seconds / 2.0;
        let first = history
            .at_or_before(mid_at)
            .filter(|m| start.is_none_or(|s| m.at_seconds > s.at_seconds))
            .map(|m| start.map_or_else(|| m.clone(), |s| m.minus(s)));
        (report(&window, by, first.as_ref()), now)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    model: String,
    version: String,
    deployment: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PredictionLabels {
    model: String,
    version: String,
    deployment: String,
}

/// `greenbelt_cost_dollars_total` and `greenbelt_predictions_total`, read
/// from the ledger at scrape time (names and help in `crate::metrics`).
/// Like every per-version series, a version's go when it is unloaded
/// (Prometheus keeps their history; the ledger's reports keep its dollars,
/// and the overhead is computed with them).
#[derive(Debug)]
pub struct CostCollector(pub Arc<Ledger>);

impl Collector for CostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut s = self.0.snapshot();
        let loaded = self.0.loaded();
        // Loaded versions, and what the stores hold now.
        s.rows.retain(|r| match r.held {
            Some(h) => h.bytes > 0.0,
            None => loaded.contains(&(r.deployment.clone(), r.version.clone())),
        });
        encode_dollars(&s, &mut encoder)?;
        encode_held(&s, &mut encoder)?;
        s.rows.retain(|r| r.held.is_none());
        encode_predictions(&s, &mut encoder)
    }
}

fn encode_dollars(s: &Snapshot, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let (name, help) = crate::metrics::COST_DOLLARS;
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for r in &s.rows {
        for (resource, v) in &r.dollars.0 {
            let labels = CostLabels {
                model: r.model.clone(),
                version: r.version.clone(),
                deployment: r.deployment.clone(),
                resource: resource.as_str().to_string(),
            };
            ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
        }
    }
    let u = &s.unattributed;
    let p = &s.prices;
    let provisioned =
        s.process.provisioned_cpu_seconds > 0.0 || s.process.provisioned_memory_gib_hours > 0.0;
    for (model, resource, v) in [
        ("_overhead", "cpu", p.cpu(u.overhead_cpu_seconds)),
        ("_overhead", "memory", p.ram(u.overhead_memory_gib_hours)),
        ("_idle", "cpu", p.cpu(u.idle_cpu_seconds)),
        ("_idle", "memory", p.ram(u.idle_memory_gib_hours)),
    ] {
        if model == "_idle" && !provisioned {
            continue;
        }
        let labels = CostLabels {
            model: model.into(),
            version: String::new(),
            deployment: String::new(),
            resource: resource.into(),
        };
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    store: String,
    model: String,
    version: String,
}

/// `greenbelt_store_bytes` and `greenbelt_store_items`: what each store
/// held at its last scan.
fn encode_held(s: &Snapshot, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for ((name, help), value) in [
        (
            crate::metrics::STORE_BYTES,
            (|h: &Held| h.bytes) as fn(&Held) -> f64,
        ),
        (crate::metrics::STORE_ITEMS, |h: &Held| h.items as f64),
    ] {
        let mut family = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for r in &s.rows {
            let Some(h) = &r.held else { continue };
            let labels = HeldLabels {
                store: h.store.as_str().to_string(),
                model: r.model.clone(),
                version: r.version.clone(),
            };
            prometheus_client::metrics::gauge::ConstGauge::new(value(h))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn encode_predictions(
    s: &Snapshot,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let (name, help) = crate::metrics::PREDICTIONS;
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for r in &s.rows {
        let labels = PredictionLabels {
            model: r.model.clone(),
            version: r.version.clone(),
            deployment: r.deployment.clone(),
        };
        ConstCounter::new(r.usage.predictions).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        assert!(CostConfig::default().validate().is_ok());
        let c = CostConfig {
            interval: "often".into(),
            ..CostConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("[cost] interval"));
        let c = CostConfig {
            provisioned_cores: Some(-2.0),
            ..CostConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("provisioned_cores"));
        let mut c = CostConfig::default();
        c.prices.cpu_core_hour = f64::NAN;
        assert!(c.validate().unwrap_err().contains("cpu_core_hour"));
    }

    #[tokio::test]
    async fn the_ledger_prices_meters_and_keeps_unloaded_versions() {
        let l = Ledger::default();
        let m = l.meter("fraud", "1");
        assert!(Arc::ptr_eq(&m, &l.meter("fraud", "1")));
        m.compute_call(Duration::from_secs(3600), Duration::from_secs(3600));
        m.answered(4, false);
        m.wire(100, GIB as usize);
        m.hold(1 << 20, 1 << 20, Instant::now());
        l.release("fraud", "1");
        let s = l.record();
        let row = &s.rows[0];
        assert_eq!(
            (row.model.as_str(), row.deployment.as_str()),
            ("fraud", "fraud")
        );
        assert_eq!(row.usage.predictions, 4);
        assert!(
            (row.dollars.get(greenbelt_core::cost::Resource::ComputeCpu) - 0.031611).abs() < 1e-12
        );
        assert!((row.dollars.get(greenbelt_core::cost::Resource::Egress) - 0.12).abs() < 1e-12);
        assert!(s.process.cpu_seconds > 0.0 && s.process.rss_bytes > 0.0);
        let (r, _) = l.report(Some(Duration::from_secs(60)), GroupBy::Model);
        assert_eq!(r.groups[0].key, "fraud");
        assert_eq!(r.predictions, 4);
    }
}
