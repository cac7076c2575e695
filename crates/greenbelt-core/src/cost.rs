//! The cost model: a price table, metered usage turned into dollars,
//! reports over a window (totals, $ per 1M predictions, the drivers that
//! dominate and their trend), budgets' burn rates and end-of-period
//! forecast, and the comparison of two measured benchmark runs. Pure: no
//! I/O and no clock; times are arguments in seconds.
//!
//! Units: CPU and GPU in seconds, memory and storage held in GiB-hours
//! (bytes held × time), egress in bytes. Prices follow OpenCost's custom
//! pricing (`configs/default.json` of opencost/opencost, "Default prices
//! based on GCP us-central1"): $ per vCPU-hour, per GiB-hour of RAM, per
//! GPU-hour, per GiB of storage a month (OpenCost's per-GiB-hour figure
//! × 730 hours) and per GiB of egress by destination class. See
//! docs/cost.md for the model and its limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bytes in a GiB.
pub const GIB: f64 = 1_073_741_824.0;
/// Hours in a month, as OpenCost and the clouds' price sheets count them.
pub const HOURS_PER_MONTH: f64 = 730.0;

/// What a dollar is spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// CPU of the model calls (thread CPU clock around each runtime call;
    /// a batch's CPU split between its requests by rows).
    ComputeCpu,
    /// CPU of a request outside compute: decoding and encoding (sampled).
    RequestCpu,
    /// GPU time of the model calls (GPU backends only).
    Gpu,
    /// Memory a loaded version holds, for as long as it is loaded.
    Memory,
    /// Storage held: a loaded version's local copy of its artifact (for
    /// as long as it is loaded), and what the stores hold ([`Held`]).
    Storage,
    /// Bytes of answers sent.
    Egress,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::ComputeCpu,
        Resource::RequestCpu,
        Resource::Gpu,
        Resource::Memory,
        Resource::Storage,
        Resource::Egress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::ComputeCpu => "compute_cpu",
            Resource::RequestCpu => "request_cpu",
            Resource::Gpu => "gpu",
            Resource::Memory => "memory",
            Resource::Storage => "storage",
            Resource::Egress => "egress",
        }
    }
}

/// Where answers go, OpenCost's egress classes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EgressClass {
    /// Within the zone.
    Zone,
    /// Across zones of a region.
    Region,
    /// To the internet (the most expensive; the default, so that cost is
    /// never understated).
    #[default]
    Internet,
}

/// $ per GiB of egress by destination class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EgressPrices {
    /// $ per GiB within the zone (OpenCost `zoneNetworkEgress`).
    pub zone: f64,
    /// $ per GiB across zones of a region (OpenCost `regionNetworkEgress`).
    pub region: f64,
    /// $ per GiB to the internet (OpenCost `internetNetworkEgress`).
    pub internet: f64,
}

impl Default for EgressPrices {
    fn default() -> Self {
        // OpenCost configs/default.json: zoneNetworkEgress,
        // regionNetworkEgress, internetNetworkEgress.
        EgressPrices {
            zone: 0.01,
            region: 0.01,
            internet: 0.12,
        }
    }
}

/// The price table (`[cost.prices]`). Defaults: OpenCost's on-demand
/// defaults (GCP us-central1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// $ per vCPU-hour (OpenCost `CPU`: 0.031611).
    pub cpu_core_hour: f64,
    /// $ per GiB-hour of RAM (OpenCost `RAM`: 0.004237).
    pub ram_gib_hour: f64,
    /// $ per GPU-hour (OpenCost `GPU`: 0.95).
    pub gpu_hour: f64,
    /// $ per GiB-month of storage (OpenCost `storage`: 0.00005479452 per
    /// GiB-hour × 730 = 0.04).
    pub storage_gib_month: f64,
    /// $ per GiB of egress by destination class.
    pub egress_gib: EgressPrices,
    /// Where the numbers come from, shown with every report.
    pub source: String,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            cpu_core_hour: 0.031611,
            ram_gib_hour: 0.004237,
            gpu_hour: 0.95,
            storage_gib_month: 0.04,
            egress_gib: EgressPrices::default(),
            source: "OpenCost default on-demand prices (opencost/opencost configs/default.json, GCP us-central1)".into(),
        }
    }
}

impl Prices {
    /// Every price must be a finite, non-negative number.
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("cpu_core_hour", self.cpu_core_hour),
            ("ram_gib_hour", self.ram_gib_hour),
            ("gpu_hour", self.gpu_hour),
            ("storage_gib_month", self.storage_gib_month),
            ("egress_gib.zone", self.egress_gib.zone),
            ("egress_gib.region", self.egress_gib.region),
            ("egress_gib.internet", self.egress_gib.internet),
        ];
        for (name, v) in all {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "[cost.prices] {name} must be a price in dollars ≥ 0, got {v}"
                ));
            }
        }
        Ok(())
    }

    pub fn egress(&self, class: EgressClass) -> f64 {
        match class {
            EgressClass::Zone => self.egress_gib.zone,
            EgressClass::Region => self.egress_gib.region,
            EgressClass::Internet => self.egress_gib.internet,
        }
    }

    /// $ for `seconds` of one CPU.
    pub fn cpu(&self, seconds: f64) -> f64 {
        seconds / 3600.0 * self.cpu_core_hour
    }

    /// $ for `gib_hours` of RAM held.
    pub fn ram(&self, gib_hours: f64) -> f64 {
        gib_hours * self.ram_gib_hour
    }
}

/// What one model version used (cumulative, or over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Successful requests.
    pub requests: u64,
    /// Rows answered by successful requests (one prediction a row).
    pub predictions: u64,
    pub compute_cpu_seconds: f64,
    /// Estimated from a sample of requests (see docs/cost.md).
    pub request_cpu_seconds: f64,
    pub gpu_seconds: f64,
    /// Time requests spent in the server, summed (not priced).
    pub wall_seconds: f64,
    pub memory_gib_hours: f64,
    pub storage_gib_hours: f64,
    /// Request bytes received (not priced: ingress is free on the clouds).
    pub ingress_bytes: f64,
    pub egress_bytes: f64,
    /// Requests that read the feature store (not priced: the store's own
    /// cost is its storage).
    pub feature_reads: u64,
}

impl Usage {
    /// Dollars by resource under `prices`.
    pub fn dollars(&self, prices: &Prices, egress: EgressClass) -> Dollars {
        let mut d = Dollars::default();
        d.set(Resource::ComputeCpu, prices.cpu(self.compute_cpu_seconds));
        d.set(Resource::RequestCpu, prices.cpu(self.request_cpu_seconds));
        d.set(Resource::Gpu, self.gpu_seconds / 3600.0 * prices.gpu_hour);
        d.set(Resource::Memory, prices.ram(self.memory_gib_hours));
        d.set(
            Resource::Storage,
            self.storage_gib_hours * prices.storage_gib_month / HOURS_PER_MONTH,
        );
        d.set(
            Resource::Egress,
            self.egress_bytes / GIB * prices.egress(egress),
        );
        d
    }

    /// CPU-seconds attributed to this version.
    pub fn cpu_seconds(&self) -> f64 {
        self.compute_cpu_seconds + self.request_cpu_seconds
    }

    /// `self - earlier`, never below zero (a counter that went down was
    /// reset: all of it is new).
    pub fn minus(&self, earlier: &Usage) -> Usage {
        let f = |a: f64, b: f64| if a >= b { a - b } else { a };
        let u = |a: u64, b: u64| a.checked_sub(b).unwrap_or(a);
        Usage {
            requests: u(self.requests, earlier.requests),
            predictions: u(self.predictions, earlier.predictions),
            compute_cpu_seconds: f(self.compute_cpu_seconds, earlier.compute_cpu_seconds),
            request_cpu_seconds: f(self.request_cpu_seconds, earlier.request_cpu_seconds),
            gpu_seconds: f(self.gpu_seconds, earlier.gpu_seconds),
            wall_seconds: f(self.wall_seconds, earlier.wall_seconds),
            memory_gib_hours: f(self.memory_gib_hours, earlier.memory_gib_hours),
            storage_gib_hours: f(self.storage_gib_hours, earlier.storage_gib_hours),
            ingress_bytes: f(self.ingress_bytes, earlier.ingress_bytes),
            egress_bytes: f(self.egress_bytes, earlier.egress_bytes),
            feature_reads: u(self.feature_reads, earlier.feature_reads),
        }
    }

    pub fn add(&mut self, o: &Usage) {
        self.requests += o.requests;
        self.predictions += o.predictions;
        self.compute_cpu_seconds += o.compute_cpu_seconds;
        self.request_cpu_seconds += o.request_cpu_seconds;
        self.gpu_seconds += o.gpu_seconds;
        self.wall_seconds += o.wall_seconds;
        self.memory_gib_hours += o.memory_gib_hours;
        self.storage_gib_hours += o.storage_gib_hours;
        self.ingress_bytes += o.ingress_bytes;
        self.egress_bytes += o.egress_bytes;
        self.feature_reads += o.feature_reads;
    }
}

/// Dollars by resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dollars(pub BTreeMap<Resource, f64>);

impl Dollars {
    pub fn set(&mut self, r: Resource, v: f64) {
        self.0.insert(r, v);
    }

    pub fn get(&self, r: Resource) -> f64 {
        self.0.get(&r).copied().unwrap_or(0.0)
    }

    pub fn total(&self) -> f64 {
        self.0.values().sum()
    }

    pub fn add(&mut self, o: &Dollars) {
        for (r, v) in &o.0 {
            *self.0.entry(*r).or_insert(0.0) += v;
        }
    }
}

/// A store whose holdings are measured by a periodic scan (not by
/// requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// The registry's artifact store: every registered version's
    /// artifact, served or not (content-addressed: one artifact that
    /// several versions share counts once, for the first of them).
    Registry,
    /// The feature store's offline store: a view's files.
    Offline,
    /// The feature store's online store: a view's keys.
    Online,
}

impl Store {
    pub const ALL: [Store; 3] = [Store::Registry, Store::Offline, Store::Online];

    pub fn as_str(self) -> &'static str {
        match self {
            Store::Registry => "registry",
            Store::Offline => "offline",
            Store::Online => "online",
        }
    }

    /// The `deployment` a holding's row carries: a holding is nobody's
    /// deployment, so `by deployment` reports list the stores by name.
    pub fn deployment(self) -> &'static str {
        match self {
            Store::Registry => "_registry",
            Store::Offline => "_offline_store",
            Store::Online => "_online_store",
        }
    }
}

/// The model a feature store holding is charged to (its `version` is the
/// feature view).
pub const FEATURES: &str = "_features";

/// What a store held at its last scan (a gauge: a window's row carries
/// the later value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub store: Store,
    pub bytes: f64,
    /// Artifacts (registry), files (offline) or keys (online).
    pub items: u64,
    /// Held in memory (Redis): priced as RAM, not storage.
    #[serde(default)]
    pub in_memory: bool,
}

/// One model version's cumulative usage and its cost; or, with `held`, a
/// store's holding for a model version (registry) or a feature view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The registry model (a deployment's `model`; else the served name);
    /// [`FEATURES`] for a feature store holding.
    pub model: String,
    /// The version; for a feature store holding, the feature view.
    pub version: String,
    /// The name clients call (`/v2/models/{deployment}`); for a holding,
    /// [`Store::deployment`].
    pub deployment: String,
    pub usage: Usage,
    pub dollars: Dollars,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

impl Row {
    fn key(&self) -> (&str, &str, &str) {
        (&self.deployment, &self.model, &self.version)
    }
}

/// The process as a whole: what no request is charged for is reported
/// here, not hidden.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Process {
    /// Process CPU time (user + system), from the kernel.
    pub cpu_seconds: f64,
    /// Resident memory, integrated over time.
    pub memory_gib_hours: f64,
    /// Resident memory now.
    pub rss_bytes: f64,
    /// Seconds since the ledger started.
    pub uptime_seconds: f64,
    /// `[cost] provisioned_cores × uptime` (0 when not configured).
    pub provisioned_cpu_seconds: f64,
    /// `[cost] provisioned_memory_gib × uptime`, in GiB-hours.
    pub provisioned_memory_gib_hours: f64,
}

/// Process usage no version is charged for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Unattributed {
    /// Overhead: process CPU outside any version's compute or request
    /// CPU (HTTP framing, routing, scheduling, telemetry, background tasks).
    pub overhead_cpu_seconds: f64,
    /// Resident memory beyond what loaded versions hold.
    pub overhead_memory_gib_hours: f64,
    /// Idle: provisioned but unused (only with `[cost] provisioned_*`).
    pub idle_cpu_seconds: f64,
    pub idle_memory_gib_hours: f64,
}

impl Unattributed {
    /// What the process used beyond the versions' attributed usage.
    pub fn of(process: &Process, rows: &[Row]) -> Unattributed {
        // A store's holding is not the process's memory.
        let rows = || rows.iter().filter(|r| r.held.is_none());
        let cpu: f64 = rows().map(|r| r.usage.cpu_seconds()).sum();
        let mem: f64 = rows().map(|r| r.usage.memory_gib_hours).sum();
        Unattributed {
            overhead_cpu_seconds: (process.cpu_seconds - cpu).max(0.0),
            overhead_memory_gib_hours: (process.memory_gib_hours - mem).max(0.0),
            idle_cpu_seconds: (process.provisioned_cpu_seconds - process.cpu_seconds).max(0.0),
            idle_memory_gib_hours: (process.provisioned_memory_gib_hours
                - process.memory_gib_hours)
                .max(0.0),
        }
    }

    /// (overhead $, idle $).
    pub fn dollars(&self, prices: &Prices) -> (f64, f64) {
        (
            prices.cpu(self.overhead_cpu_seconds) + prices.ram(self.overhead_memory_gib_hours),
            prices.cpu(self.idle_cpu_seconds) + prices.ram(self.idle_memory_gib_hours),
        )
    }
}

/// The ledger at one moment: every version's cumulative usage and cost,
/// and the process's (`GET /admin/cost` `snapshot`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Seconds since the ledger started (monotonic).
    pub at_seconds: f64,
    pub prices: Prices,
    pub egress_class: EgressClass,
    pub rows: Vec<Row>,
    pub process: Process,
    pub unattributed: Unattributed,
}

impl Snapshot {
    /// Build a snapshot, pricing every row.
    pub fn new(
        at_seconds: f64,
        prices: Prices,
        egress_class: EgressClass,
        rows: Vec<(String, String, String, Usage)>,
        process: Process,
    ) -> Snapshot {
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|(model, version, deployment, usage)| Row {
                dollars: usage.dollars(&prices, egress_class),
                model,
                version,
                deployment,
                usage,
                held: None,
            })
            .collect();
        let unattributed = Unattributed::of(&process, &rows);
        Snapshot {
            at_seconds,
            prices,
            egress_class,
            rows,
            process,
            unattributed,
        }
    }

    /// Add the stores' holdings: (model, version, what is held, usage —
    /// the GiB-hours held), priced like the rest.
    pub fn with_held(mut self, held: Vec<(String, String, Held, Usage)>) -> Snapshot {
        for (model, version, h, usage) in held {
            self.rows.push(Row {
                dollars: usage.dollars(&self.prices, self.egress_class),
                deployment: h.store.deployment().to_string(),
                model,
                version,
                usage,
                held: Some(h),
            });
        }
        self
    }

    /// What happened between `earlier` and `self`, priced with `self`'s
    /// prices. Versions new since `earlier` count whole.
    pub fn minus(&self, earlier: &Snapshot) -> Snapshot {
        let usage_since = |r: &Row| {
            let before = earlier.rows.iter().find(|e| e.key() == r.key());
            before.map_or(r.usage, |b| r.usage.minus(&b.usage))
        };
        let held = self
            .rows
            .iter()
            .filter_map(|r| {
                let h = r.held?;
                Some((r.model.clone(), r.version.clone(), h, usage_since(r)))
            })
            .collect();
        let rows = self
            .rows
            .iter()
            .filter(|r| r.held.is_none())
            .map(|r| {
                (
                    r.model.clone(),
                    r.version.clone(),
                    r.deployment.clone(),
                    usage_since(r),
                )
            })
            .collect();
        let p = &self.process;
        let e = &earlier.process;
        let process = Process {
            cpu_seconds: (p.cpu_seconds - e.cpu_seconds).max(0.0),
            memory_gib_hours: (p.memory_gib_hours - e.memory_gib_hours).max(0.0),
            rss_bytes: p.rss_bytes,
            uptime_seconds: (p.uptime_seconds - e.uptime_seconds).max(0.0),
            provisioned_cpu_seconds: (p.provisioned_cpu_seconds - e.provisioned_cpu_seconds)
                .max(0.0),
            provisioned_memory_gib_hours: (p.provisioned_memory_gib_hours
                - e.provisioned_memory_gib_hours)
                .max(0.0),
        };
        Snapshot::new(
            self.at_seconds - earlier.at_seconds,
            self.prices.clone(),
            self.egress_class,
            rows,
            process,
        )
        .with_held(held)
    }

    /// Attributed dollars of the rows `keep` selects.
    pub fn spend(&self, keep: impl Fn(&Row) -> bool) -> f64 {
        self.rows
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.dollars.total())
            .sum()
    }

    /// Attributed, overhead and idle dollars.
    pub fn totals(&self) -> (f64, f64, f64) {
        let attributed = self.spend(|_| true);
        let (overhead, idle) = self.unattributed.dollars(&self.prices);
        (attributed, overhead, idle)
    }
}

/// How a report groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    #[default]
    Model,
    Version,
    Deployment,
    Resource,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<GroupBy, String> {
        match s {
            "model" => Ok(GroupBy::Model),
            "version" => Ok(GroupBy::Version),
            "deployment" => Ok(GroupBy::Deployment),
            "resource" => Ok(GroupBy::Resource),
            _ => Err(format!(
                "by \"{s}\": expected model, version, deployment or resource"
            )),
        }
    }
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: String,
    pub dollars: f64,
    /// Of the window's total (attributed + overhead + idle).
    pub share: f64,
    /// Predictions of the group's versions (0 for resources and overhead).
    pub predictions: u64,
    /// The group's own dollars per 1M of its predictions.
    pub dollars_per_million: Option<f64>,
}

/// A resource of a model that weighs on the bill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    pub model: String,
    pub resource: String,
    pub dollars: f64,
    pub share: f64,
    /// Spend rate in the window's second half over its first, minus one
    /// (0.5: half again as fast); None without a first half to compare.
    pub trend: Option<f64>,
}

/// `greenbelt cost report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub window_seconds: f64,
    pub by: GroupBy,
    pub prices: Prices,
    pub egress_class: EgressClass,
    pub total_dollars: f64,
    pub attributed_dollars: f64,
    pub overhead_dollars: f64,
    pub idle_dollars: f64,
    pub requests: u64,
    pub predictions: u64,
    /// Every dollar of the window (overhead and idle included) per 1M
    /// predictions.
    pub dollars_per_million: Option<f64>,
    pub groups: Vec<Group>,
    pub drivers: Vec<Driver>,
}

/// Drivers a report lists.
pub const TOP_DRIVERS: usize = 5;

fn per_million(dollars: f64, predictions: u64) -> Option<f64> {
    (predictions > 0).then(|| dollars / predictions as f64 * 1e6)
}

/// The report of `window` (a [`Snapshot::minus`]), grouped `by`; `first`
/// is the window's first half, for the drivers' trend.
pub fn report(window: &Snapshot, by: GroupBy, first: Option<&Snapshot>) -> Report {
    let (attributed, overhead, idle) = window.totals();
    let total = attributed + overhead + idle;
    let share = |d: f64| if total > 0.0 { d / total } else { 0.0 };
    let mut groups: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for r in &window.rows {
        match by {
            GroupBy::Resource => {
                for (res, d) in &r.dollars.0 {
                    groups.entry(res.as_str().to_string()).or_default().0 += d;
                }
            }
            _ => {
                let key = match by {
                    GroupBy::Model => r.model.clone(),
                    GroupBy::Deployment => r.deployment.clone(),
                    _ => format!("{}/{}", r.model, r.version),
                };
                let g = groups.entry(key).or_default();
                g.0 += r.dollars.total();
                g.1 += r.usage.predictions;
            }
        }
    }
    let mut groups: Vec<Group> = groups
        .into_iter()
        .map(|(key, (dollars, predictions))| Group {
            share: share(dollars),
            dollars_per_million: per_million(dollars, predictions),
            key,
            dollars,
            predictions,
        })
        .collect();
    for (key, dollars) in [("_overhead", overhead), ("_idle", idle)] {
        if dollars > 0.0 {
            groups.push(Group {
                key: key.into(),
                dollars,
                share: share(dollars),
                predictions: 0,
                dollars_per_million: None,
            });
        }
    }
    groups.sort_by(|a, b| b.dollars.total_cmp(&a.dollars).then(a.key.cmp(&b.key)));
    let predictions = window.rows.iter().map(|r| r.usage.predictions).sum();
    Report {
        window_seconds: window.at_seconds,
        by,
        prices: window.prices.clone(),
        egress_class: window.egress_class,
        total_dollars: total,
        attributed_dollars: attributed,
        overhead_dollars: overhead,
        idle_dollars: idle,
        requests: window.rows.iter().map(|r| r.usage.requests).sum(),
        predictions,
        dollars_per_million: per_million(total, predictions),
        groups,
        drivers: drivers(window, first, total),
    }
}

/// (model, resource) → dollars, the overhead and idle under model `_overhead` / `_idle`.
fn by_driver(s: &Snapshot) -> BTreeMap<(String, String), f64> {
    let mut m: BTreeMap<(String, String), f64> = BTreeMap::new();
    for r in &s.rows {
        for (res, d) in &r.dollars.0 {
            *m.entry((r.model.clone(), res.as_str().to_string()))
                .or_default() += d;
        }
    }
    let u = &s.unattributed;
    let p = &s.prices;
    for (model, resource, d) in [
        ("_overhead", "cpu", p.cpu(u.overhead_cpu_seconds)),
        ("_overhead", "memory", p.ram(u.overhead_memory_gib_hours)),
        ("_idle", "cpu", p.cpu(u.idle_cpu_seconds)),
        ("_idle", "memory", p.ram(u.idle_memory_gib_hours)),
    ] {
        if d > 0.0 {
            m.insert((model.into(), resource.into()), d);
        }
    }
    m
}

fn drivers(window: &Snapshot, first: Option<&Snapshot>, total: f64) -> Vec<Driver> {
    let now = by_driver(window);
    let before = first.map(by_driver);
    let mut out: Vec<Driver> = now
        .into_iter()
        .filter(|(_, d)| *d > 0.0)
        .map(|((model, resource), dollars)| {
            let trend = before.as_ref().and_then(|b| {
                let first_half = b.get(&(model.clone(), resource.clone())).copied()?;
                let second_half = dollars - first_half;
                (first_half > 0.0).then(|| second_half / first_half - 1.0)
            });
            Driver {
                share: if total > 0.0 { dollars / total } else { 0.0 },
                model,
                resource,
                dollars,
                trend,
            }
        })
        .collect();
    out.sort_by(|a, b| b.dollars.total_cmp(&a.dollars));
    out.truncate(TOP_DRIVERS);
    out
}

/// Snapshots kept for reports over a past window: every one of the last
/// hour, then one a minute for a day, then one every 15 minutes for 8 days.
#[derive(Debug, Default)]
pub struct History {
    points: std::collections::VecDeque<Snapshot>,
}

/// (age up to, least spacing) in seconds.
const HISTORY_TIERS: [(f64, f64); 3] = [(3600.0, 0.0), (86_400.0, 60.0), (8.0 * 86_400.0, 900.0)];

impl History {
    /// Add the newest snapshot and thin the older ones: oldest first, a
    /// point stays when it is at least its age tier's spacing after the
    /// last point kept before it (so the spacing holds as points age).
    pub fn push(&mut self, s: Snapshot) {
        let now = s.at_seconds;
        self.points.push_back(s);
        let mut kept = std::collections::VecDeque::with_capacity(self.points.len());
        let mut older: Option<f64> = None;
        while let Some(p) = self.points.pop_front() {
            let age = now - p.at_seconds;
            let Some(&(_, spacing)) = HISTORY_TIERS.iter().find(|(upto, _)| age <= *upto) else {
                continue; // older than the last tier
            };
            if older.is_none_or(|o| p.at_seconds - o >= spacing) {
                older = Some(p.at_seconds);
                kept.push_back(p);
            }
        }
        self.points = kept;
    }

    /// The newest snapshot at or before `at` seconds, else the oldest kept.
    pub fn at_or_before(&self, at: f64) -> Option<&Snapshot> {
        self.points
            .iter()
            .rev()
            .find(|p| p.at_seconds <= at)
            .or_else(|| self.points.front())
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// One budget's multi-window burn: the same windows and factors as the SLO
/// burn-rate alerts (`(severity, long, short, factor)` in seconds), where
/// the burn rate over a window is the spend in it over the budget's
/// pro-rata share of that window (`amount × window / period`). A severity
/// fires when any of its pairs has both windows above the factor.
#[derive(Debug, Clone)]
pub struct BudgetWatch {
    pub amount: f64,
    pub period_seconds: f64,
    /// (monotonic seconds, cumulative spend).
    points: std::collections::VecDeque<(f64, f64)>,
    /// Per severity (in the order given to `tick`): firing since (seconds).
    firing: Vec<Option<f64>>,
}

/// A burn pair: severity, long window, short window (seconds), factor.
pub type BurnPair = (&'static str, f64, f64, f64);

/// A severity's state change.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnChange {
    pub severity: &'static str,
    pub firing: bool,
    /// When it started firing (seconds, the `tick` clock).
    pub since: f64,
}

impl BudgetWatch {
    pub fn new(amount: f64, period_seconds: f64) -> BudgetWatch {
        BudgetWatch {
            amount,
            period_seconds,
            points: Default::default(),
            firing: Vec::new(),
        }
    }

    /// The window's first and last points: the newest point at or before
    /// `now - w` (or the oldest, when there is less history), and the newest.
    fn window(&self, now: f64, w: f64) -> Option<((f64, f64), (f64, f64))> {
        let last = *self.points.back()?;
        let from = self
            .points
            .iter()
            .rev()
            .find(|p| now - p.0 >= w)
            .or_else(|| self.points.front())
            .copied()
            .unwrap_or(last);
        Some((from, last))
    }

    /// Spend rate ($ per second) over the last `w` seconds, over the time
    /// the points cover (for forecasts: a server up for ten minutes
    /// forecasts from those ten minutes).
    pub fn spend_rate(&self, now: f64, w: f64) -> f64 {
        match self.window(now, w) {
            Some((from, last)) if last.0 > from.0 => (last.1 - from.1).max(0.0) / (last.0 - from.0),
            _ => 0.0,
        }
    }

    /// Spend in the last `w` seconds (since the first point, when there
    /// is less history: nothing was spent before it).
    pub fn spend_in(&self, now: f64, w: f64) -> f64 {
        self.window(now, w)
            .map_or(0.0, |(from, last)| (last.1 - from.1).max(0.0))
    }

    /// Burn rate over the last `w` seconds: the spend in the window over
    /// the budget's share of it, `amount × w / period` (1.0: on pace to
    /// spend exactly the amount), as Prometheus'
    /// `rate(greenbelt_cost_dollars_total[w]) × period / amount`.
    pub fn burn_rate(&self, now: f64, w: f64) -> f64 {
        let allowed = self.amount * w / self.period_seconds;
        let spent = self.spend_in(now, w);
        if allowed > 0.0 {
            spent / allowed
        } else if spent > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// Record the cumulative spend at `now` and return the severities that
    /// changed state.
    pub fn tick(&mut self, now: f64, cumulative: f64, pairs: &[BurnPair]) -> Vec<BurnChange> {
        self.points.push_back((now, cumulative));
        let longest = pairs.iter().map(|p| p.1).fold(0.0, f64::max);
        while self.points.len() > 2 && self.points.get(1).is_some_and(|p| now - p.0 >= longest) {
            self.points.pop_front();
        }
        let mut severities: Vec<&'static str> = Vec::new();
        for p in pairs {
            if !severities.contains(&p.0) {
                severities.push(p.0);
            }
        }
        self.firing.resize(severities.len(), None);
        let mut out = Vec::new();
        for (i, &sev) in severities.iter().enumerate() {
            let burning = pairs
                .iter()
                .filter(|p| p.0 == sev)
                .any(|p| self.burn_rate(now, p.1) > p.3 && self.burn_rate(now, p.2) > p.3);
            let Some(slot) = self.firing.get_mut(i) else {
                continue;
            };
            match (slot.is_some(), burning) {
                (false, true) => {
                    *slot = Some(now);
                    out.push(BurnChange {
                        severity: sev,
                        firing: true,
                        since: now,
                    });
                }
                (true, false) => {
                    let since = slot.take().unwrap_or(now);
                    out.push(BurnChange {
                        severity: sev,
                        firing: false,
                        since,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// Whether the `i`-th severity fires, and since when.
    pub fn firing(&self, i: usize) -> Option<f64> {
        self.firing.get(i).copied().flatten()
    }
}

/// Where a budget's period stands and where it is heading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Unix seconds the period began and ends (periods are aligned to the
    /// Unix epoch: a 1d period is a UTC day).
    pub period_start_unix: f64,
    pub period_end_unix: f64,
    /// Spent so far in the period (since the server started, when it
    /// started inside the period: see `partial`).
    pub spent: f64,
    /// The spend rate the forecast assumes, $ per hour.
    pub rate_per_hour: f64,
    /// `spent + rate × time left`.
    pub forecast: f64,
    /// `forecast / amount`.
    pub forecast_ratio: f64,
    /// The server has not seen the whole period so far.
    pub partial: bool,
}

/// A linear forecast of the period's end spend: `spent` so far plus
/// `rate_per_second` for the time left.
pub fn forecast(
    amount: f64,
    period_seconds: f64,
    now_unix: f64,
    spent: f64,
    rate_per_second: f64,
    partial: bool,
) -> Forecast {
    let start = (now_unix / period_seconds).floor() * period_seconds;
    let end = start + period_seconds;
    let projected = spent + rate_per_second.max(0.0) * (end - now_unix).max(0.0);
    Forecast {
        period_start_unix: start,
        period_end_unix: end,
        spent,
        rate_per_hour: rate_per_second * 3600.0,
        forecast: projected,
        forecast_ratio: if amount > 0.0 {
            projected / amount
        } else {
            f64::INFINITY
        },
        partial,
    }
}

/// What one measured benchmark run cost (the `cost` block `greenbelt bench
/// --json` writes): the server's ledger over the measured part, for the
/// model under load, and the whole process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCost {
    pub duration_seconds: f64,
    /// The benchmarked model's versions, summed.
    pub usage: Usage,
    /// The process over the same time.
    pub process: Process,
    pub prices: Prices,
    pub egress_class: EgressClass,
}

impl RunCost {
    /// Cut the model's rows out of a window of the ledger.
    pub fn of(window: &Snapshot, deployment: &str) -> RunCost {
        let mut usage = Usage::default();
        for r in window.rows.iter().filter(|r| r.deployment == deployment) {
            usage.add(&r.usage);
        }
        RunCost {
            duration_seconds: window.at_seconds,
            usage,
            process: window.process,
            prices: window.prices.clone(),
            egress_class: window.egress_class,
        }
    }

    /// $ by line item under `prices`: the version's resources, then the
    /// process's overhead CPU and memory (what the run cost that no request
    /// was charged for, so that a change that moves work out of the
    /// attributed path cannot hide it).
    pub fn lines(&self, prices: &Prices) -> Vec<(String, f64)> {
        let d = self.usage.dollars(prices, self.egress_class);
        let mut lines: Vec<(String, f64)> = Resource::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), d.get(*r)))
            .collect();
        let rows = [Row {
            model: String::new(),
            version: String::new(),
            deployment: String::new(),
            usage: self.usage,
            dollars: d,
            held: None,
        }];
        let u = Unattributed::of(&self.process, &rows);
        lines.push(("overhead_cpu".into(), prices.cpu(u.overhead_cpu_seconds)));
        lines.push((
            "overhead_memory".into(),
            prices.ram(u.overhead_memory_gib_hours),
        ));
        lines
    }
}

/// One line of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareLine {
    pub item: String,
    /// $ per 1M predictions in run A and run B.
    pub before: f64,
    pub after: f64,
    /// `before - after`.
    pub saving: f64,
    /// Of the total saving (negative when this line got dearer).
    pub share_of_saving: Option<f64>,
}

/// `greenbelt cost compare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub prices: Prices,
    pub predictions_before: u64,
    pub predictions_after: u64,
    pub throughput_before: f64,
    pub throughput_after: f64,
    /// $ per 1M predictions, everything counted.
    pub before: f64,
    pub after: f64,
    pub saving: f64,
    /// `saving / before`.
    pub saving_ratio: f64,
    /// Per line item, the largest saving first.
    pub lines: Vec<CompareLine>,
}

/// Compare two runs' $ per 1M predictions under `prices` (default: run A's).
pub fn compare(a: &RunCost, b: &RunCost, prices: Option<&Prices>) -> Result<Comparison, String> {
    let prices = prices.unwrap_or(&a.prices);
    for (name, r) in [("RUN_A", a), ("RUN_B", b)] {
        if r.usage.predictions == 0 {
            return Err(format!(
                "{name} answered no predictions: nothing to divide its cost by"
            ));
        }
    }
    let per = |r: &RunCost| -> Vec<(String, f64)> {
        let n = r.usage.predictions as f64;
        r.lines(prices)
            .into_iter()
            .map(|(k, d)| (k, d / n * 1e6))
            .collect()
    };
    let (pa, pb) = (per(a), per(b));
    let before: f64 = pa.iter().map(|l| l.1).sum();
    let after: f64 = pb.iter().map(|l| l.1).sum();
    let saving = before - after;
    let mut lines: Vec<CompareLine> = pa
        .into_iter()
        .zip(pb)
        .map(|((item, x), (_, y))| CompareLine {
            item,
            before: x,
            after: y,
            saving: x - y,
            share_of_saving: (saving.abs() > 0.0).then(|| (x - y) / saving),
        })
        .collect();
    lines.sort_by(|x, y| y.saving.total_cmp(&x.saving));
    let rate = |r: &RunCost| {
        if r.duration_seconds > 0.0 {
            r.usage.predictions as f64 / r.duration_seconds
        } else {
            0.0
        }
    };
    Ok(Comparison {
        prices: prices.clone(),
        predictions_before: a.usage.predictions,
        predictions_after: b.usage.predictions,
        throughput_before: rate(a),
        throughput_after: rate(b),
        before,
        after,
        saving,
        saving_ratio: if before > 0.0 { saving / before } else { 0.0 },
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu: f64, predictions: u64) -> Usage {
        Usage {
            requests: predictions,
            predictions,
            compute_cpu_seconds: cpu,
            ..Usage::default()
        }
    }

    #[test]
    fn default_prices_are_opencosts() {
        let p = Prices::default();
        assert_eq!(p.cpu_core_hour, 0.031611);
        assert_eq!(p.ram_gib_hour, 0.004237);
        assert_eq!(p.gpu_hour, 0.95);
        // OpenCost's storage is 0.00005479452 per GiB-hour.
        assert!((p.storage_gib_month / HOURS_PER_MONTH - 0.000_054_794_52).abs() < 1e-12);
        assert_eq!(p.egress(EgressClass::Internet), 0.12);
        assert_eq!(p.egress(EgressClass::Zone), 0.01);
        assert!(p.validate().is_ok());
        let bad = Prices {
            ram_gib_hour: -1.0,
            ..Prices::default()
        };
        assert!(bad.validate().unwrap_err().contains("ram_gib_hour"));
    }

    #[test]
    fn usage_is_priced_by_resource() {
        let u = Usage {
            compute_cpu_seconds: 3600.0,
            request_cpu_seconds: 1800.0,
            gpu_seconds: 7200.0,
            memory_gib_hours: 10.0,
            storage_gib_hours: 730.0,
            egress_bytes: 2.0 * GIB,
            ..Usage::default()
        };
        let d = u.dollars(&Prices::default(), EgressClass::Zone);
        assert!((d.get(Resource::ComputeCpu) - 0.031611).abs() < 1e-12);
        assert!((d.get(Resource::RequestCpu) - 0.031611 / 2.0).abs() < 1e-12);
        assert!((d.get(Resource::Gpu) - 1.9).abs() < 1e-12);
        assert!((d.get(Resource::Memory) - 0.04237).abs() < 1e-12);
        assert!((d.get(Resource::Storage) - 0.04).abs() < 1e-12);
        assert!((d.get(Resource::Egress) - 0.02).abs() < 1e-12);
    }

    fn snap(at: f64, rows: Vec<(&str, &str, Usage)>, process_cpu: f64) -> Snapshot {
        Snapshot::new(
            at,
            Prices::default(),
            EgressClass::Internet,
            rows.into_iter()
                .map(|(m, v, u)| (m.to_string(), v.to_string(), m.to_string(), u))
                .collect(),
            Process {
                cpu_seconds: process_cpu,
                uptime_seconds: at,
                ..Process::default()
            },
        )
    }

    #[test]
    fn holdings_are_priced_grouped_and_kept_out_of_the_overhead() {
        let held = |store, bytes: f64, in_memory| Held {
            store,
            bytes,
            items: 3,
            in_memory,
        };
        let gib_hours = |storage: f64, memory: f64| Usage {
            storage_gib_hours: storage,
            memory_gib_hours: memory,
            ..Usage::default()
        };
        let at = |t: f64, scale: f64| {
            snap(t, vec![("fraud", "2", usage(30.0, 10))], 50.0).with_held(vec![
                (
                    "fraud".into(),
                    "1".into(),
                    held(Store::Registry, GIB, false),
                    gib_hours(730.0 * scale, 0.0),
                ),
                (
                    FEATURES.into(),
                    "user_profile".into(),
                    held(Store::Online, 2.0 * GIB, true),
                    gib_hours(0.0, 10.0 * scale),
                ),
            ])
        };
        let s = at(100.0, 1.0);
        // Redis's bytes cost RAM; the registry's cost storage.
        let by_version = report(&s, GroupBy::Version, None);
        let dollars = |key: &str| {
            by_version
                .groups
                .iter()
                .find(|g| g.key == key)
                .map(|g| g.dollars)
        };
        assert!((dollars("fraud/1").unwrap() - 0.04).abs() < 1e-12);
        assert!((dollars("_features/user_profile").unwrap() - 0.04237).abs() < 1e-12);
        // The process's memory overhead is not lowered by Redis's memory,
        // nor its CPU overhead by anything.
        assert!((s.unattributed.overhead_cpu_seconds - 20.0).abs() < 1e-12);
        let by_deployment = report(&s, GroupBy::Deployment, None);
        let keys: Vec<&str> = by_deployment
            .groups
            .iter()
            .map(|g| g.key.as_str())
            .collect();
        assert!(
            keys.contains(&"_registry") && keys.contains(&"_online_store"),
            "{keys:?}"
        );
        // By model, a model's registry artifacts are its own cost.
        let by_model = report(&s, GroupBy::Model, None);
        let fraud = by_model.groups.iter().find(|g| g.key == "fraud").unwrap();
        assert!(fraud.dollars > Prices::default().cpu(30.0) + 0.039);
        // A window keeps the later gauge and the GiB-hours in between.
        let w = at(200.0, 3.0).minus(&s);
        let row = w
            .rows
            .iter()
            .find(|r| r.held.is_some_and(|h| h.store == Store::Registry));
        let row = row.unwrap();
        assert_eq!(row.held.unwrap().bytes, GIB);
        assert!((row.usage.storage_gib_hours - 1460.0).abs() < 1e-9);
        // Serialized rows of versions carry no `held`; holdings do.
        let json = serde_json::to_value(&w).unwrap();
        assert!(json["rows"][0].get("held").is_none());
        assert_eq!(json["rows"][2]["held"]["store"], "online");
    }

    #[test]
    fn overhead_is_what_the_versions_were_not_charged() {
        let s = snap(
            100.0,
            vec![("a", "1", usage(30.0, 10)), ("b", "1", usage(10.0, 10))],
            50.0,
        );
        assert!((s.unattributed.overhead_cpu_seconds - 10.0).abs() < 1e-12);
        let (attributed, overhead, idle) = s.totals();
        assert!((attributed - Prices::default().cpu(40.0)).abs() < 1e-12);
        assert!((overhead - Prices::default().cpu(10.0)).abs() < 1e-12);
        assert_eq!(idle, 0.0);
    }

    #[test]
    fn a_window_is_the_difference_and_new_versions_count_whole() {
        let a = snap(10.0, vec![("a", "1", usage(5.0, 100))], 6.0);
        let b = snap(
            20.0,
            vec![("a", "1", usage(8.0, 300)), ("a", "2", usage(1.0, 50))],
            12.0,
        );
        let w = b.minus(&a);
        assert_eq!(w.at_seconds, 10.0);
        assert_eq!(w.rows[0].usage.predictions, 200);
        assert!((w.rows[0].usage.compute_cpu_seconds - 3.0).abs() < 1e-12);
        assert_eq!(w.rows[1].usage.predictions, 50);
        assert!((w.process.cpu_seconds - 6.0).abs() < 1e-12);
        assert!((w.unattributed.overhead_cpu_seconds - 2.0).abs() < 1e-12);
    }

    #[test]
    fn report_groups_shares_and_drivers() {
        let first = snap(
            50.0,
            vec![("a", "1", usage(10.0, 1000)), ("b", "1", usage(10.0, 1000))],
            25.0,
        );
        let window = snap(
            100.0,
            vec![("a", "1", usage(30.0, 3000)), ("b", "1", usage(20.0, 1000))],
            60.0,
        );
        let r = report(&window, GroupBy::Model, Some(&first));
        let p = Prices::default();
        assert!((r.total_dollars - p.cpu(60.0)).abs() < 1e-12);
        assert_eq!(r.predictions, 4000);
        assert_eq!(r.groups[0].key, "a");
        assert!((r.groups[0].share - 0.5).abs() < 1e-9);
        assert!(
            (r.groups[0].dollars_per_million.unwrap() - p.cpu(30.0) / 3000.0 * 1e6).abs() < 1e-9
        );
        assert_eq!(r.groups.last().unwrap().key, "_overhead");
        // a: 10 in the first half, 20 in the second → trend +100 %.
        let a = r.drivers.iter().find(|d| d.model == "a").unwrap();
        assert_eq!(a.resource, "compute_cpu");
        assert!((a.trend.unwrap() - 1.0).abs() < 1e-9);
        let b = r.drivers.iter().find(|d| d.model == "b").unwrap();
        assert!(b.trend.unwrap().abs() < 1e-9);
        let by_res = report(&window, GroupBy::Resource, None);
        assert_eq!(by_res.groups[0].key, "compute_cpu");
        assert!(by_res.drivers.iter().all(|d| d.trend.is_none()));
        assert_eq!("resource".parse::<GroupBy>(), Ok(GroupBy::Resource));
        assert!(
            "colour"
                .parse::<GroupBy>()
                .unwrap_err()
                .contains("expected")
        );
    }

    #[test]
    fn history_thins_with_age() {
        let mut h = History::default();
        // one point every 10 s for 2 hours
        for i in 0..=720 {
            h.push(snap(f64::from(i) * 10.0, vec![], 0.0));
        }
        // the last hour whole (361 points), the hour before one a minute (60)
        assert!((415..=425).contains(&h.len()), "{}", h.len());
        assert_eq!(h.at_or_before(7200.0 - 600.0).unwrap().at_seconds, 6600.0);
        let old = h.at_or_before(1000.0).unwrap().at_seconds;
        assert!(old <= 1000.0 && old > 900.0, "{old}");
        // past 8 days everything older goes
        h.push(snap(10.0 * 86_400.0, vec![], 0.0));
        assert_eq!(h.len(), 1);
    }

    const PAIRS: [BurnPair; 4] = [
        ("page", 3600.0, 300.0, 14.4),
        ("page", 6.0 * 3600.0, 1800.0, 6.0),
        ("ticket", 86_400.0, 7200.0, 3.0),
        ("ticket", 3.0 * 86_400.0, 6.0 * 3600.0, 1.0),
    ];

    #[test]
    fn a_fast_burn_pages_a_slow_one_tickets_and_both_resolve() {
        // $720 a 30-day period: $1 an hour on pace.
        let period = 30.0 * 86_400.0;
        let mut w = BudgetWatch::new(720.0, period);
        let mut spent = 0.0;
        let mut changes = Vec::new();
        // 70 minutes at $20/hour (20x): pages
        for m in 0..=70 {
            if m > 0 {
                spent += 20.0 / 60.0;
            }
            changes.extend(w.tick(f64::from(m) * 60.0, spent, &PAIRS));
        }
        assert!(
            changes.iter().any(|c| c.severity == "page" && c.firing),
            "{changes:?}"
        );
        assert!(w.burn_rate(70.0 * 60.0, 3600.0) > 14.4);
        // then nothing for 10 minutes: the 5 m window is clean, the page resolves
        let mut resolved = Vec::new();
        for m in 71..=80 {
            resolved.extend(w.tick(f64::from(m) * 60.0, spent, &PAIRS));
        }
        assert!(
            resolved.iter().any(|c| c.severity == "page" && !c.firing),
            "{resolved:?}"
        );
        assert_eq!(w.firing(0), None);

        // a slow burn, 4x for 26 hours: a ticket once a day is seen, never a page
        let mut w = BudgetWatch::new(720.0, period);
        let mut spent = 0.0;
        let mut changes = Vec::new();
        for t in 0..=156 {
            if t > 0 {
                spent += 4.0 / 6.0;
            }
            changes.extend(w.tick(f64::from(t) * 600.0, spent, &PAIRS));
        }
        assert!(changes.iter().any(|c| c.severity == "ticket" && c.firing));
        assert!(!changes.iter().any(|c| c.severity == "page"));

        // under pace (0.9x): nothing
        let mut w = BudgetWatch::new(720.0, period);
        let mut quiet = Vec::new();
        for m in 0..=600 {
            quiet.extend(w.tick(f64::from(m) * 60.0, f64::from(m) * 0.9 / 60.0, &PAIRS));
        }
        assert!(quiet.is_empty(), "{quiet:?}");
    }

    #[test]
    fn forecast_extends_the_rate_to_the_period_end() {
        // a 1-day period, 6 hours in, $3 spent, $1/hour → $21 at the end.
        let day = 86_400.0;
        let f = forecast(
            10.0,
            day,
            100.0 * day + 6.0 * 3600.0,
            3.0,
            1.0 / 3600.0,
            false,
        );
        assert_eq!(f.period_start_unix, 100.0 * day);
        assert_eq!(f.period_end_unix, 101.0 * day);
        assert!((f.forecast - 21.0).abs() < 1e-9);
        assert!((f.forecast_ratio - 2.1).abs() < 1e-9);
        assert!((f.rate_per_hour - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_comparison_says_what_was_saved_and_where() {
        let prices = Prices::default();
        let run = |cpu: f64, predictions: u64, process_cpu: f64| RunCost {
            duration_seconds: 10.0,
            usage: Usage {
                predictions,
                compute_cpu_seconds: cpu,
                request_cpu_seconds: 1.0,
                ..Usage::default()
            },
            process: Process {
                cpu_seconds: process_cpu,
                ..Process::default()
            },
            prices: prices.clone(),
            egress_class: EgressClass::Internet,
        };
        // B does the same predictions with half the compute CPU.
        let a = run(8.0, 1_000_000, 12.0);
        let b = run(4.0, 1_000_000, 8.0);
        let c = compare(&a, &b, None).unwrap();
        assert!((c.before - prices.cpu(12.0)).abs() < 1e-9);
        assert!((c.after - prices.cpu(8.0)).abs() < 1e-9);
        assert!((c.saving_ratio - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(c.lines[0].item, "compute_cpu");
        assert!((c.lines[0].share_of_saving.unwrap() - 1.0).abs() < 1e-9);
        let none = run(1.0, 0, 1.0);
        assert!(compare(&a, &none, None).unwrap_err().contains("RUN_B"));
    }
}
