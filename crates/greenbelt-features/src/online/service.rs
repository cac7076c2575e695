//! Online serving: `get_online_features` and `push` over an online store,
//! with a bounded in-process cache (moka) in front. TTL is enforced on every
//! read, cached or not: a value older than its view's TTL comes back null
//! with status `OUTSIDE_MAX_AGE`. Cache entries live at most
//! min(cache TTL, view TTL) and are invalidated by writes through this
//! service (push and online materialization). The response follows Feast's
//! feature server: `{"metadata":{"feature_names":[...]},"results":[{"values",
//! "statuses","event_timestamps"}]}`, one result per column (join keys first).
//!
//! Store calls go through circuit breakers with a per-call timeout (see
//! `resilience`). When a read fails, a feature service's `fallback` decides:
//! `error` fails the read; `last_value` serves the last value this service
//! read for the entity (status `STALE`, its age in `degraded`), else the
//! feature's default; `default` serves the feature's default (status
//! `DEFAULT`). A cell neither can fill fails the read with the store's error.
//!
//! A view whose data is past its freshness SLA (the pipeline that feeds it
//! stopped: [`OnlineService::set_freshness`], from the server's freshness
//! check) is never served silently: its cells come back `STALE` (the stored
//! value) or, under `fallback = "default"`, `DEFAULT`, and the read is
//! degraded with the reason.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use futures::StreamExt;
use greenbelt_core::breaker::SharedBreaker;
use moka::Expiry;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::resilience::{LastValue, OnlineStatus, Resilience, WRITE_TIMEOUT};
use super::{OnlineBackend, OnlineStore, Record, storage_key};
use crate::contracts::Checker;
use crate::defs::{Definitions, Fallback, FeatureRef, FeatureView, ValueType};
use crate::error::{FeatureError, Result};
use crate::freshness::ViewFreshness;
use crate::offline::{CREATED_TIMESTAMP, EVENT_TIMESTAMP, OfflineStore, offline_schema};
use crate::source::{EngineOptions, session};
use crate::time::{format_ts, now_us, parse_ts};

/// Most entity rows in one online request.
pub const MAX_ENTITY_ROWS: usize = 10_000;
/// Most rows in one push.
pub const MAX_PUSH_ROWS: usize = 100_000;

/// Per-value status, as Feast names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FieldStatus {
    Present,
    NullValue,
    NotFound,
    OutsideMaxAge,
    /// The store failed; this is the last value read for the entity.
    Stale,
    /// The store failed; this is the feature's default.
    Default,
}

impl FieldStatus {
    /// The status as Feast writes it (`PRESENT`, `NULL_VALUE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FieldStatus::Present => "PRESENT",
            FieldStatus::NullValue => "NULL_VALUE",
            FieldStatus::NotFound => "NOT_FOUND",
            FieldStatus::OutsideMaxAge => "OUTSIDE_MAX_AGE",
            FieldStatus::Stale => "STALE",
            FieldStatus::Default => "DEFAULT",
        }
    }
}

/// A feature service's values for entity rows as numbers: the typed answer
/// the serving path reads (no Feast-shaped JSON in between).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMatrix {
    /// `view:feature`, in the service's order.
    pub names: Vec<String>,
    pub rows: usize,
    /// `rows × names.len()`, row-major; `None` unless the status is
    /// `Present`, `Stale` or `Default`.
    pub values: Vec<Option<f64>>,
    /// `rows × names.len()`, row-major.
    pub statuses: Vec<FieldStatus>,
    /// Set when fallbacks answered (the store failed).
    pub degraded: Option<Degraded>,
}

/// How a read was answered while the store failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Degraded {
    /// The store's error.
    pub reason: String,
    /// The service's fallback (`last_value` or `default`).
    pub fallback: String,
    /// Age of the oldest last value served, seconds (since it was read
    /// from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_age_seconds: Option<f64>,
    pub stale_values: u64,
    pub default_values: u64,
}

/// A view past its freshness SLA: reads of it are flagged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleView {
    pub view: String,
    /// Seconds since the newest event the batch path delivered.
    pub age_seconds: f64,
    /// The view's `freshness_sla`, seconds.
    pub sla_seconds: f64,
}

impl StaleView {
    fn reason(&self) -> String {
        format!(
            "feature view \"{}\" is past its freshness SLA (newest data {:.0} s old, SLA {:.0} s): the pipeline that feeds it is behind",
            self.view, self.age_seconds, self.sla_seconds
        )
    }
}

/// `POST /features/online` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineRequest {
    /// Join key → one value per entity row.
    pub entities: BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    pub feature_service: Option<String>,
    /// `view:feature` names (instead of a service).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Name features `view__feature` instead of `feature`.
    #[serde(default)]
    pub full_feature_names: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub feature_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureColumn {
    pub values: Vec<Value>,
    pub statuses: Vec<FieldStatus>,
    pub event_timestamps: Vec<String>,
}

/// The Feast-shaped answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineResponse {
    pub metadata: Metadata,
    pub results: Vec<FeatureColumn>,
    /// Present when the store failed and fallbacks answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Degraded>,
}

/// `POST /features/push` body: columns of rows for one view.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub feature_view: String,
    /// Column → values: the join keys, `event_timestamp`, optionally
    /// `created_timestamp`, and every feature of the view.
    pub df: BTreeMap<String, Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    pub feature_view: String,
    pub rows: u64,
    /// Keys whose stored value was replaced (older stored values only).
    pub written: u64,
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Off: every read goes to the store.
    pub enabled: bool,
    /// Most cached entity keys.
    pub max_entries: u64,
    /// Longest an entry lives (also never longer than its view's TTL).
    pub ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            enabled: true,
            max_entries: 100_000,
            ttl: Duration::from_secs(60),
        }
    }
}

/// A stored record as read: decoded once, with its event time as text (a
/// response repeats it for every feature of the view).
#[derive(Debug)]
struct Stored {
    record: Record,
    event_ts: String,
}

impl Stored {
    fn new(record: Record) -> Stored {
        Stored {
            event_ts: format_ts(record.event_us),
            record,
        }
    }
}

#[derive(Debug)]
struct Cached {
    stored: Option<Arc<Stored>>,
    ttl: Duration,
}

struct PerEntry;

impl Expiry<String, Arc<Cached>> for PerEntry {
    fn expire_after_create(
        &self,
        _k: &String,
        v: &Arc<Cached>,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Online reads and writes for a set of definitions.
#[derive(Clone)]
pub struct OnlineService {
    defs: Arc<Definitions>,
    store: OnlineStore,
    cache: Option<Cache<String, Arc<Cached>>>,
    cache_ttl: Duration,
    clock: Clock,
    resilience: Arc<Resilience<Stored>>,
    /// Views past their freshness SLA (replaced whole by `set_freshness`).
    stale: Arc<RwLock<Arc<BTreeMap<String, StaleView>>>>,
}

/// Records for a read's storage keys: `failed[i]` when the store could not
/// answer for key `i` (then `records[i]` is its last value, if kept).
struct Fetched {
    records: Vec<Option<Arc<Stored>>>,
    /// Per key, when the store failed: the age of the last value.
    failed: Vec<Option<Option<Duration>>>,
    /// The store's error, when it failed.
    error: Option<String>,
}

/// A read's fallback: the service's setting and limits.
#[derive(Clone, Copy)]
struct FallbackRule {
    fallback: Fallback,
    max_age: Option<Duration>,
}

/// What a read judges ages by: its clock (TTL) and the views past their
/// freshness SLA, with the service's fallback for them.
#[derive(Clone, Copy)]
struct Late<'a> {
    now: i64,
    stale: &'a BTreeMap<String, StaleView>,
    fallback: Fallback,
}

impl FallbackRule {
    const ERROR: FallbackRule = FallbackRule {
        fallback: Fallback::Error,
        max_age: None,
    };
}

/// Tallies of one read's fallbacks.
#[derive(Default)]
struct Tally {
    stale: u64,
    defaults: u64,
    oldest: Option<Duration>,
    /// Why a view past its freshness SLA was flagged (the first such view).
    late: Option<String>,
}

impl Tally {
    fn degraded(&self, error: &Option<String>, rule: FallbackRule) -> Option<Degraded> {
        let reason = error.as_ref().or(self.late.as_ref())?;
        (self.stale + self.defaults > 0).then(|| Degraded {
            reason: reason.clone(),
            fallback: rule.fallback.as_str().to_string(),
            stale_age_seconds: self.oldest.map(|d| d.as_secs_f64()),
            stale_values: self.stale,
            default_values: self.defaults,
        })
    }
}

fn json_key(what: &str, t: ValueType, v: &Value) -> Result<String> {
    let bad = || {
        FeatureError::Invalid(format!(
            "{what}: {} is not a {}",
            v.to_string().chars().take(60).collect::<String>(),
            t.name()
        ))
    };
    match (t, v) {
        (ValueType::String, Value::String(s)) => Ok(s.clone()),
        (ValueType::Int64, Value::Number(n)) => n.as_i64().map(|i| i.to_string()).ok_or_else(bad),
        (ValueType::Bool, Value::Bool(b)) => Ok(b.to_string()),
        _ => Err(bad()),
    }
}

/// One Arrow cell as JSON.
pub fn cell(a: &ArrayRef, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::Utf8 => a
            .as_any()
            .downcast_ref::<StringArray>()
            .map_or(Value::Null, |s| Value::from(s.value(i))),
        DataType::Int64 => a
            .as_any()
            .downcast_ref::<Int64Array>()
            .map_or(Value::Null, |s| Value::from(s.value(i))),
        DataType::Float64 => a
            .as_any()
            .downcast_ref::<Float64Array>()
            .and_then(|s| serde_json::Number::from_f64(s.value(i)))
            .map_or(Value::Null, Value::Number),
        DataType::Boolean => a
            .as_any()
            .downcast_ref::<BooleanArray>()
            .map_or(Value::Null, |s| Value::from(s.value(i))),
        _ => match cast(a, &DataType::Utf8) {
            Ok(t) => cell(&t, i),
            Err(_) => Value::Null,
        },
    }
}

fn key_text(a: &ArrayRef, i: usize) -> Option<String> {
    match cell(a, i) {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// A read, resolved: the views it touches (first-appearance order), the
/// join keys in the answer, and one storage key per view and entity row
/// (view-major).
struct ReadPlan<'a> {
    views: Vec<&'a FeatureView>,
    join_names: Vec<(String, ValueType)>,
    keys: Vec<(String, &'a FeatureView)>,
    rows: usize,
}

impl OnlineService {
    pub fn new(defs: Arc<Definitions>, store: OnlineStore, cache: CacheOptions) -> OnlineService {
        let c = cache.enabled.then(|| {
            Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(PerEntry)
                .build()
        });
        OnlineService {
            resilience: Arc::new(Resilience::new(&defs)),
            defs,
            store,
            cache: c,
            cache_ttl: cache.ttl,
            clock: Arc::new(now_us),
            stale: Arc::default(),
        }
    }

    /// Take a freshness check's findings: every view with offline data
    /// older than its freshness SLA is served flagged until a later check
    /// finds it fresh. A view without offline data (fed only by push) is
    /// not judged here.
    pub fn set_freshness(&self, report: &[ViewFreshness]) {
        let stale: BTreeMap<String, StaleView> = report
            .iter()
            .filter(|f| f.breach)
            .filter_map(|f| {
                Some((
                    f.view.clone(),
                    StaleView {
                        view: f.view.clone(),
                        age_seconds: f.age_seconds?,
                        sla_seconds: f.sla_seconds?,
                    },
                ))
            })
            .collect();
        if let Ok(mut s) = self.stale.write() {
            *s = Arc::new(stale);
        }
    }

    /// The views now served flagged as stale.
    pub fn stale_views(&self) -> Vec<StaleView> {
        self.stale_now().values().cloned().collect()
    }

    fn stale_now(&self) -> Arc<BTreeMap<String, StaleView>> {
        self.stale.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The breakers, last-value cache and degraded-read counters.
    pub fn online_status(&self) -> OnlineStatus {
        let mut s = self.resilience.status();
        s.stale_views = self.stale_views();
        s
    }

    /// The read timeout: `[store] online_timeout`, and at most half of
    /// what is left before `deadline` (the rest is for the fallback and the
    /// model).
    fn read_timeout(&self, deadline: Option<tokio::time::Instant>) -> Duration {
        let t = self.resilience.timeout;
        match deadline {
            Some(d) => t.min(d.saturating_duration_since(tokio::time::Instant::now()) / 2),
            None => t,
        }
    }

    /// Read keys from the store through the read breaker. A read that
    /// fails fast (not refused by the breaker, not cut by its timeout: a
    /// dropped connection the store re-establishes) is tried once more in
    /// what is left of its time, when the retry budget allows.
    async fn store_read(
        &self,
        keys: Vec<String>,
        timeout: Duration,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        use greenbelt_core::breaker::CallError;
        let r = &self.resilience;
        r.retry.deposit();
        let started = tokio::time::Instant::now();
        let again = keys.clone();
        let first = r
            .read
            .call(timeout, self.store.read(keys), |e| {
                matches!(e, FeatureError::Online(_) | FeatureError::Io(_))
            })
            .await;
        let result = match first {
            Err(CallError::Failed(e @ (FeatureError::Online(_) | FeatureError::Io(_)))) => {
                let left = timeout.saturating_sub(started.elapsed());
                if left >= Duration::from_millis(1) && r.retry.try_withdraw() {
                    tracing::debug!(error = %e, "online store read failed; retrying once");
                    r.read
                        .call(left, self.store.read(again), |e| {
                            matches!(e, FeatureError::Online(_) | FeatureError::Io(_))
                        })
                        .await
                } else {
                    Err(CallError::Failed(e))
                }
            }
            other => other,
        };
        result.map_err(|e| match e {
            CallError::Failed(e) => e,
            other => FeatureError::Online(format!("read: {other}")),
        })
    }

    /// The breakers around reads and writes, and the read retry budget,
    /// for the server's `/admin/breakers` and `/metrics`.
    pub fn breakers(
        &self,
    ) -> (
        SharedBreaker,
        SharedBreaker,
        Arc<greenbelt_core::retry::RetryBudget>,
    ) {
        let r = &self.resilience;
        (r.read.clone(), r.write.clone(), r.retry.clone())
    }

    /// Write through the write breaker.
    async fn store_write<F>(&self, write: F) -> Result<u64>
    where
        F: std::future::Future<Output = Result<u64>>,
    {
        self.resilience
            .write
            .call(WRITE_TIMEOUT, write, |e| {
                matches!(e, FeatureError::Online(_) | FeatureError::Io(_))
            })
            .await
            .map_err(|e| match e {
                greenbelt_core::breaker::CallError::Failed(e) => e,
                other => FeatureError::Online(format!("write: {other}")),
            })
    }

    /// Replace the wall clock (µs UTC) used for TTL checks (tests, canary).
    pub fn with_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> OnlineService {
        self.clock = Arc::new(clock);
        self
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.defs
    }

    /// The backend itself, without the breaker or the cache (for scans
    /// such as the cost ledger's, not for reads).
    pub fn store(&self) -> &OnlineStore {
        &self.store
    }

    fn entry_ttl(&self, view: &FeatureView) -> Duration {
        match view.ttl_us {
            Some(t) => self.cache_ttl.min(Duration::from_micros(t.max(1) as u64)),
            None => self.cache_ttl,
        }
    }

    /// Records for storage keys, cache first, one store read for the misses
    /// (cut at `timeout`). When the store fails and `rule` has a fallback,
    /// the misses get their last values (if kept and young enough) and are
    /// marked failed; with `error`, the store's error is returned.
    async fn fetch(
        &self,
        keys: &[(String, &FeatureView)],
        timeout: Duration,
        rule: FallbackRule,
    ) -> Result<Fetched> {
        let mut out: Vec<Option<Option<Arc<Stored>>>> = vec![None; keys.len()];
        let mut failed: Vec<Option<Option<Duration>>> = vec![None; keys.len()];
        let mut error = None;
        if let Some(cache) = &self.cache {
            for (i, (k, _)) in keys.iter().enumerate() {
                if let Some(c) = cache.get(k).await {
                    out[i] = Some(c.stored.clone());
                }
            }
        }
        let missing: Vec<usize> = (0..keys.len()).filter(|i| out[*i].is_none()).collect();
        if !missing.is_empty() {
            let read = self
                .store_read(
                    missing.iter().map(|i| keys[*i].0.clone()).collect(),
                    timeout,
                )
                .await;
            let raw = match read {
                Ok(raw) => raw,
                Err(e @ FeatureError::Online(_)) if rule.fallback != Fallback::Error => {
                    let now = tokio::time::Instant::now();
                    for &i in &missing {
                        let last = match &self.resilience.last {
                            Some(c) if rule.fallback == Fallback::LastValue => {
                                c.get(&keys[i].0).await.and_then(|l| {
                                    let age = now.saturating_duration_since(l.read_at);
                                    let young = rule.max_age.is_none_or(|m| age <= m);
                                    young.then(|| (l.value.clone(), age))
                                })
                            }
                            _ => None,
                        };
                        failed[i] = Some(last.as_ref().map(|(_, age)| *age));
                        out[i] = Some(last.map(|(v, _)| v));
                    }
                    error = Some(e.to_string());
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let now = tokio::time::Instant::now();
            for (i, bytes) in missing.into_iter().zip(raw) {
                let rec = bytes
                    .map(|b| Record::decode(&b).map(|r| Arc::new(Stored::new(r))))
                    .transpose()?;
                if let Some(cache) = &self.cache {
                    let ttl = self.entry_ttl(keys[i].1);
                    cache
                        .insert(
                            keys[i].0.clone(),
                            Arc::new(Cached {
                                stored: rec.clone(),
                                ttl,
                            }),
                        )
                        .await;
                }
                if let (Some(last), Some(r)) = (&self.resilience.last, &rec) {
                    last.insert(
                        keys[i].0.clone(),
                        Arc::new(LastValue {
                            value: r.clone(),
                            read_at: now,
                        }),
                    )
                    .await;
                }
                out[i] = Some(rec);
            }
        }
        Ok(Fetched {
            records: out.into_iter().map(Option::flatten).collect(),
            failed,
            error,
        })
    }

    /// One cell of a read: the value (`Null` unless `PRESENT`, `STALE` or
    /// `DEFAULT`), its status and the event time of the record it came
    /// from. A cell of a failed key gets its last value, else the feature's
    /// default, else the read fails.
    fn resolve<'f>(
        &self,
        fetched: &'f Fetched,
        i: usize,
        view: &FeatureView,
        r: &FeatureRef,
        late: Late<'_>,
        tally: &mut Tally,
    ) -> Result<(Value, FieldStatus, Option<&'f Stored>)> {
        let rec = fetched.records[i].as_deref();
        let now = late.now;
        let expired = |s: &Stored| view.ttl_us.is_some_and(|t| now - s.record.event_us > t);
        let Some(age) = fetched.failed[i] else {
            let Some(stored) = rec else {
                return Ok((Value::Null, FieldStatus::NotFound, None));
            };
            if expired(stored) {
                return Ok((Value::Null, FieldStatus::OutsideMaxAge, Some(stored)));
            }
            let v = stored
                .record
                .values
                .get(&r.feature)
                .cloned()
                .unwrap_or(Value::Null);
            if v.is_null() {
                return Ok((v, FieldStatus::NullValue, Some(stored)));
            }
            let Some(stale) = late.stale.get(&view.name) else {
                return Ok((v, FieldStatus::Present, Some(stored)));
            };
            // The view is past its freshness SLA: never serve it silently.
            if tally.late.is_none() {
                tally.late = Some(stale.reason());
            }
            let age = Duration::from_secs_f64(stale.age_seconds.max(0.0));
            if late.fallback == Fallback::Default
                && let Some(d) = view.feature(&r.feature).and_then(|f| f.default.clone())
            {
                tally.defaults += 1;
                return Ok((d, FieldStatus::Default, None));
            }
            tally.stale += 1;
            tally.oldest = Some(tally.oldest.map_or(age, |o| o.max(age)));
            return Ok((v, FieldStatus::Stale, Some(stored)));
        };
        if let (Some(stored), Some(age)) = (rec, age)
            && !expired(stored)
            && let Some(v) = stored
                .record
                .values
                .get(&r.feature)
                .filter(|v| !v.is_null())
        {
            tally.stale += 1;
            tally.oldest = Some(tally.oldest.map_or(age, |o| o.max(age)));
            return Ok((v.clone(), FieldStatus::Stale, Some(stored)));
        }
        if let Some(d) = view.feature(&r.feature).and_then(|f| f.default.clone()) {
            tally.defaults += 1;
            return Ok((d, FieldStatus::Default, None));
        }
        Err(FeatureError::Online(format!(
            "{}; feature \"{r}\" has no last value for this entity and no default to fall back on",
            fetched.error.as_deref().unwrap_or("the store failed")
        )))
    }

    /// Check entity rows against the views of `refs` and work out the
    /// storage keys to read.
    fn plan<'a>(
        &'a self,
        refs: &[FeatureRef],
        entities: &BTreeMap<String, Vec<Value>>,
    ) -> Result<ReadPlan<'a>> {
        let n = entities.values().next().map_or(0, Vec::len);
        if n > MAX_ENTITY_ROWS {
            return Err(FeatureError::Invalid(format!(
                "entities: {n} rows; at most {MAX_ENTITY_ROWS} per request"
            )));
        }
        for (k, v) in entities {
            if v.len() != n {
                return Err(FeatureError::Invalid(format!(
                    "entities.{k} has {} values, other keys have {n}; give every key one value per row",
                    v.len()
                )));
            }
        }
        let mut views: Vec<&FeatureView> = Vec::new();
        for r in refs {
            let v = self.defs.view(&r.view)?;
            if !views.iter().any(|x| x.name == v.name) {
                views.push(v);
            }
        }
        let mut join_names: Vec<(String, ValueType)> = Vec::new();
        let mut keys: Vec<(String, &FeatureView)> = Vec::with_capacity(n * views.len());
        for v in &views {
            let mut texts: Vec<Vec<String>> = vec![Vec::new(); n];
            for k in &v.join_keys {
                let col = entities.get(&k.name).ok_or_else(|| {
                    FeatureError::Invalid(format!(
                        "entities.{}: missing; feature view \"{}\" is keyed by it",
                        k.name, v.name
                    ))
                })?;
                if !join_names.iter().any(|(j, _)| *j == k.name) {
                    join_names.push((k.name.clone(), k.dtype));
                }
                for (i, val) in col.iter().enumerate() {
                    texts[i].push(json_key(
                        &format!("entities.{}[{i}]", k.name),
                        k.dtype,
                        val,
                    )?);
                }
            }
            for t in texts {
                keys.push((storage_key(&v.name, &t), *v));
            }
        }
        for k in entities.keys() {
            if !join_names.iter().any(|(j, _)| j == k) {
                return Err(FeatureError::Invalid(format!(
                    "entities.{k}: not a join key of the requested feature views (they use: {})",
                    join_names
                        .iter()
                        .map(|(j, _)| j.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(ReadPlan {
            views,
            join_names,
            keys,
            rows: n,
        })
    }

    /// A feature service's values for entity rows (join key → one value
    /// per row) as a row-major matrix of numbers with a status per cell.
    /// Every feature of the service must be numeric (float64, int64 or
    /// bool, read as 0/1). The same reads, cache, TTL and fallback rules as
    /// [`OnlineService::get_online_features`].
    pub async fn lookup(
        &self,
        service: &str,
        entities: &BTreeMap<String, Vec<Value>>,
    ) -> Result<FeatureMatrix> {
        self.lookup_by(service, entities, None).await
    }

    /// [`OnlineService::lookup`] for a request that must answer by
    /// `deadline`: the store read gets at most half the time left.
    pub async fn lookup_by(
        &self,
        service: &str,
        entities: &BTreeMap<String, Vec<Value>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<FeatureMatrix> {
        let svc = self.defs.service(service)?;
        let refs = &svc.features;
        for r in refs {
            let f = self
                .defs
                .view(&r.view)?
                .feature(&r.feature)
                .ok_or_else(|| FeatureError::NotFound(format!("feature \"{r}\" is not defined")))?;
            if f.dtype == ValueType::String {
                return Err(FeatureError::Invalid(format!(
                    "feature service \"{service}\": feature \"{r}\" is a string; a model input takes numbers (float64, int64 or bool)"
                )));
            }
        }
        let rule = FallbackRule {
            fallback: svc.fallback,
            max_age: svc.fallback_max_age,
        };
        let plan = self.plan(refs, entities)?;
        let fetched = self
            .fetch(&plan.keys, self.read_timeout(deadline), rule)
            .await?;
        let now = (self.clock)();
        let (n, width) = (plan.rows, refs.len());
        let mut out = FeatureMatrix {
            names: refs.iter().map(ToString::to_string).collect(),
            rows: n,
            values: vec![None; n * width],
            statuses: vec![FieldStatus::NotFound; n * width],
            degraded: None,
        };
        let mut tally = Tally::default();
        let stale = self.stale_now();
        let late = Late {
            now,
            stale: &stale,
            fallback: rule.fallback,
        };
        for (c, r) in refs.iter().enumerate() {
            let vi = plan
                .views
                .iter()
                .position(|v| v.name == r.view)
                .unwrap_or(0);
            let view = plan.views[vi];
            for row in 0..n {
                let at = row * width + c;
                let (v, status, _) =
                    self.resolve(&fetched, vi * n + row, view, r, late, &mut tally)?;
                let x = match &v {
                    Value::Null => None,
                    Value::Number(x) => x.as_f64(),
                    Value::Bool(b) => Some(f64::from(u8::from(*b))),
                    other => {
                        return Err(FeatureError::Data(format!(
                            "feature \"{r}\": stored value {other} is not a number"
                        )));
                    }
                };
                out.statuses[at] = match (status, x) {
                    (FieldStatus::Present, None) => FieldStatus::NullValue,
                    (s, _) => s,
                };
                out.values[at] = x;
            }
        }
        out.degraded = tally.degraded(&fetched.error, rule);
        if let Some(d) = &out.degraded {
            self.resilience
                .degraded(service, d.stale_values, d.default_values);
        }
        Ok(out)
    }

    /// Feature values for entity rows (see the module docs for the shape).
    pub async fn get_online_features(&self, req: &OnlineRequest) -> Result<OnlineResponse> {
        let resolved: Vec<FeatureRef>;
        let (refs, rule): (&[FeatureRef], FallbackRule) =
            match (&req.feature_service, &req.features) {
                (Some(s), None) => {
                    let svc = self.defs.service(s)?;
                    (
                        svc.features.as_slice(),
                        FallbackRule {
                            fallback: svc.fallback,
                            max_age: svc.fallback_max_age,
                        },
                    )
                }
                (None, Some(f)) => {
                    resolved = self.defs.resolve_features(f)?;
                    (resolved.as_slice(), FallbackRule::ERROR)
                }
                (Some(_), Some(_)) => {
                    return Err(FeatureError::Invalid(
                        "give either feature_service or features, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(FeatureError::Invalid(
                        "feature_service or features is required".into(),
                    ));
                }
            };
        let ReadPlan {
            views,
            join_names,
            keys,
            rows: n,
        } = self.plan(refs, &req.entities)?;
        let fetched = self.fetch(&keys, self.read_timeout(None), rule).await?;
        let now = (self.clock)();
        let epoch = format_ts(0);
        let mut names = Vec::new();
        let mut results = Vec::new();
        for (j, _) in &join_names {
            names.push(j.clone());
            results.push(FeatureColumn {
                values: req.entities.get(j).cloned().unwrap_or_default(),
                statuses: vec![FieldStatus::Present; n],
                event_timestamps: vec![epoch.clone(); n],
            });
        }
        let mut tally = Tally::default();
        let stale = self.stale_now();
        let late = Late {
            now,
            stale: &stale,
            fallback: rule.fallback,
        };
        for r in refs {
            let vi = views.iter().position(|v| v.name == r.view).unwrap_or(0);
            let view = views[vi];
            names.push(if req.full_feature_names {
                format!("{}__{}", r.view, r.feature)
            } else {
                r.feature.clone()
            });
            let mut col = FeatureColumn {
                values: Vec::with_capacity(n),
                statuses: Vec::with_capacity(n),
                event_timestamps: Vec::with_capacity(n),
            };
            for row in 0..n {
                let (v, status, ts) =
                    self.resolve(&fetched, vi * n + row, view, r, late, &mut tally)?;
                col.values.push(v);
                col.statuses.push(status);
                col.event_timestamps
                    .push(ts.map_or_else(|| epoch.clone(), |s| s.event_ts.clone()));
            }
            results.push(col);
        }
        let degraded = tally.degraded(&fetched.error, rule);
        if let (Some(d), Some(s)) = (&degraded, &req.feature_service) {
            self.resilience
                .degraded(s, d.stale_values, d.default_values);
        }
        Ok(OnlineResponse {
            metadata: Metadata {
                feature_names: names,
            },
            results,
            degraded,
        })
    }

    /// Write rows in the offline layout (join keys, `event_timestamp`,
    /// `created_timestamp`, features) to the online store, newest per key,
    /// and drop those keys from the cache. Returns keys written. On Redis a
    /// key of a view with a TTL expires at its event time + TTL (plus
    /// `redis::EXPIRY_MARGIN`) by this service's clock.
    pub async fn write_batch(&self, view: &FeatureView, batch: &RecordBatch) -> Result<u64> {
        use std::collections::btree_map::Entry;
        let col = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                FeatureError::Invalid(format!(
                    "feature view \"{}\": column \"{name}\" missing in the rows to write",
                    view.name
                ))
            })
        };
        let keys: Vec<ArrayRef> = view
            .join_keys
            .iter()
            .map(|k| col(&k.name))
            .collect::<Result<_>>()?;
        let ts_type = DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        );
        let ev = cast(&col(EVENT_TIMESTAMP)?, &ts_type)?;
        let ev = ev
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .cloned()
            .ok_or_else(|| FeatureError::Data("event_timestamp is not a timestamp".into()))?;
        let cr = match batch.column_by_name(CREATED_TIMESTAMP) {
            Some(c) => cast(c, &ts_type)?
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .cloned(),
            None => None,
        };
        let feats: Vec<ArrayRef> = view
            .features
            .iter()
            .map(|f| col(&f.name))
            .collect::<Result<_>>()?;
        // `"name":` of every feature, JSON-escaped once per batch.
        let names: Vec<Vec<u8>> = view
            .features
            .iter()
            .map(|f| {
                let mut n = Value::from(f.name.as_str()).to_string().into_bytes();
                n.push(b':');
                n
            })
            .collect();
        // The newest row per key: (event, created, row); of two rows equal
        // in both, the later one.
        let mut latest: BTreeMap<String, (i64, i64, usize)> = BTreeMap::new();
        'rows: for i in 0..batch.num_rows() {
            if ev.is_null(i) {
                continue;
            }
            let mut kt = Vec::with_capacity(keys.len());
            for k in &keys {
                match key_text(k, i) {
                    Some(t) => kt.push(t),
                    None => continue 'rows,
                }
            }
            let event = ev.value(i);
            let created = cr
                .as_ref()
                .filter(|c| c.is_valid(i))
                .map_or(i64::MIN, |c| c.value(i));
            match latest.entry(storage_key(&view.name, &kt)) {
                Entry::Occupied(mut e) => {
                    let (oe, oc, _) = *e.get();
                    if (oe, oc) <= (event, created) {
                        e.insert((event, created, i));
                    }
                }
                Entry::Vacant(e) => {
                    e.insert((event, created, i));
                }
            }
        }
        // Encode only the winners, straight from the columns, in the
        // `Record` format (order prefix, then the values as a JSON object)
        // without building a map per row.
        let mut items: Vec<(String, Vec<u8>, Option<i64>)> = Vec::with_capacity(latest.len());
        for (key, (event_us, created_us, i)) in latest {
            let mut out = Record {
                event_us,
                created_us,
                values: Map::new(),
            }
            .order()
            .into_bytes();
            out.reserve(2 + feats.len() * 28);
            out.push(b'{');
            for (j, (a, name)) in feats.iter().zip(&names).enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name);
                serde_json::to_writer(&mut out, &cell(a, i))
                    .map_err(|e| FeatureError::Data(format!("encoding a value: {e}")))?;
            }
            out.push(b'}');
            let deadline = view.ttl_us.map(|t| event_us.saturating_add(t));
            items.push((key, out, deadline));
        }
        let invalidate: Vec<String> = match &self.cache {
            Some(_) => items.iter().map(|(k, _, _)| k.clone()).collect(),
            None => Vec::new(),
        };
        let written = match &self.store {
            OnlineStore::Redis(r) => {
                self.store_write(r.write_expiring(items, (self.clock)()))
                    .await?
            }
            store => {
                self.store_write(store.write(items.into_iter().map(|(k, v, _)| (k, v)).collect()))
                    .await?
            }
        };
        if let Some(cache) = &self.cache {
            for k in invalidate {
                cache.invalidate(&k).await;
            }
        }
        Ok(written)
    }

    /// Validate pushed rows against the view's types, the clock (an event
    /// time more than `[push] max_clock_skew` ahead of this service's clock
    /// is refused: it would never expire and would shadow every later push)
    /// and the view's contract, then write them (newest per key) and
    /// invalidate their cache entries.
    pub async fn push(&self, req: &PushRequest) -> Result<PushResponse> {
        let view = self.defs.view(&req.feature_view)?;
        let batch = push_batch(view, &req.df)?;
        check_event_times(&batch, (self.clock)(), self.defs.push_max_clock_skew_us)?;
        if let Some(c) = &view.contract {
            check_push_contract(view, c, &batch, (self.clock)()).await?;
        }
        let written = self.write_batch(view, &batch).await?;
        Ok(PushResponse {
            feature_view: view.name.clone(),
            rows: batch.num_rows() as u64,
            written,
        })
    }

    /// Write a view's latest offline values in [start, end) to the online
    /// store. Only the newest row of each key can end up in the store, so
    /// the query picks it (one sort, spilling under the engine's memory
    /// limit) and every key is written once, in few large store calls,
    /// instead of once per row of its history.
    pub async fn materialize_online(
        &self,
        offline: &OfflineStore,
        view_name: &str,
        start: i64,
        end: i64,
        engine: &EngineOptions,
    ) -> Result<u64> {
        use datafusion::arrow::compute::concat_batches;
        use datafusion::prelude::{cast as dcast, col, lit};

        use crate::source::q;
        /// Rows per `write_batch` call (one redb transaction, a few Redis pipelines).
        const WRITE_ROWS: usize = 65_536;
        let view = self.defs.view(view_name)?;
        let ctx = session(engine)?;
        let ts = DataType::Timestamp(
            datafusion::arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        );
        let df = offline.read_view(&ctx, view_name).await?.filter(
            col(EVENT_TIMESTAMP)
                .gt_eq(dcast(lit(start), ts.clone()))
                .and(col(EVENT_TIMESTAMP).lt(dcast(lit(end), ts))),
        )?;
        let table = "__gb_materialize_online";
        ctx.register_table(table, df.into_view())?;
        let columns: Vec<String> = offline_schema(view)
            .fields()
            .iter()
            .map(|f| q(f.name()))
            .collect();
        let keys: Vec<String> = view.join_keys.iter().map(|k| q(&k.name)).collect();
        // Newest by event time, then created time (missing = oldest).
        let sql = format!(
            "SELECT {cols} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {ev} DESC, {cr} DESC NULLS LAST) AS __gb_rn FROM {table}) WHERE __gb_rn = 1",
            cols = columns.join(", "),
            keys = keys.join(", "),
            ev = q(EVENT_TIMESTAMP),
            cr = q(CREATED_TIMESTAMP),
        );
        let latest = ctx.sql(&sql).await?;
        let mut s = latest.execute_stream().await?;
        let schema = s.schema();
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut rows = 0;
        let mut written = 0;
        let mut newest: Option<i64> = None;
        loop {
            let next = s.next().await.transpose()?;
            let done = next.is_none();
            if let Some(b) = next {
                rows += b.num_rows();
                if let Some(t) = newest_event(&b)? {
                    newest = Some(newest.map_or(t, |n| n.max(t)));
                }
                pending.push(b);
            }
            if rows > 0 && (rows >= WRITE_ROWS || done) {
                let batch = concat_batches(&schema, &pending)?;
                written += self.write_batch(view, &batch).await?;
                pending.clear();
                rows = 0;
            }
            if done {
                break;
            }
        }
        // The batch canary's sentinel: the newest event this run delivered.
        if let Some(df) = newest.and_then(|t| crate::canary::batch_sentinel(view, t)) {
            self.write_batch(view, &push_batch(view, &df)?).await?;
        }
        Ok(written)
    }
}

/// Refuse rows whose event time lies more than `max_skew_us` after `now_us`.
fn check_event_times(batch: &RecordBatch, now_us: i64, max_skew_us: i64) -> Result<()> {
    let Some(ev) = batch
        .column_by_name(EVENT_TIMESTAMP)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
    else {
        return Ok(());
    };
    let limit = now_us.saturating_add(max_skew_us);
    for i in 0..ev.len() {
        if ev.is_valid(i) && ev.value(i) > limit {
            let ahead =
                Duration::from_secs(u64::try_from((ev.value(i) - now_us) / 1_000_000).unwrap_or(0));
            let skew = Duration::from_secs(u64::try_from(max_skew_us / 1_000_000).unwrap_or(0));
            return Err(FeatureError::Invalid(format!(
                "df row {i}: {EVENT_TIMESTAMP} {} is {} ahead of the server clock ({}); the limit is {} ahead ({}, features.toml [push] max_clock_skew)",
                format_ts(ev.value(i)),
                humantime::format_duration(ahead),
                format_ts(now_us),
                humantime::format_duration(skew),
                format_ts(limit),
            )));
        }
    }
    Ok(())
}

/// Check pushed rows against the view's contract: every rule one value can
/// break (the error names the row, the column and the rule), then `unique`
/// within the push. Rules over a whole data set (row counts, freshness,
/// PSI, `mostly`) judge materialized data, not a push.
async fn check_push_contract(
    view: &FeatureView,
    contract: &crate::contracts::Contract,
    batch: &RecordBatch,
    now_us: i64,
) -> Result<()> {
    use crate::contracts::{Contract, RuleSpec, first_broken};
    let rules = contract.row_rules()?;
    if let Some(b) = first_broken(&rules, batch)? {
        let kind = if view.feature(&b.rule.column).is_some() {
            "feature"
        } else if view.join_keys.iter().any(|k| k.name == b.rule.column) {
            "join key"
        } else {
            "column"
        };
        return Err(FeatureError::Invalid(format!(
            "df row {}: {kind} \"{}\" = {} breaks the contract of feature view \"{}\": {}",
            b.row, b.rule.column, b.value, view.name, b.rule.label
        )));
    }
    let unique: Vec<RuleSpec> = contract
        .rules
        .iter()
        .filter(|r| matches!(r, RuleSpec::Unique { .. }))
        .cloned()
        .collect();
    if unique.is_empty() {
        return Ok(());
    }
    let only_unique = Contract {
        policy: contract.policy,
        rules: unique,
    };
    let mut ch = Checker::new(
        &format!("feature view \"{}\"", view.name),
        &only_unique,
        None,
        now_us,
    )
    .await?;
    let reasons = ch.check(batch)?;
    if let Some((i, r)) = reasons
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.as_ref().map(|r| (i, r)))
    {
        return Err(FeatureError::Invalid(format!(
            "df row {i} breaks the contract of feature view \"{}\": {r} (the push repeats a key)",
            view.name
        )));
    }
    Ok(())
}

/// The newest event time in a batch of offline-layout rows.
fn newest_event(batch: &RecordBatch) -> Result<Option<i64>> {
    let Some(c) = batch.column_by_name(EVENT_TIMESTAMP) else {
        return Ok(None);
    };
    let ts_type = DataType::Timestamp(
        datafusion::arrow::datatypes::TimeUnit::Microsecond,
        Some("UTC".into()),
    );
    let ev = cast(c, &ts_type)?;
    Ok(ev
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .and_then(datafusion::arrow::compute::max))
}

/// Pushed columns as a batch in the offline layout, checking every value's type.
pub fn push_batch(view: &FeatureView, df: &BTreeMap<String, Vec<Value>>) -> Result<RecordBatch> {
    let n = df.get(EVENT_TIMESTAMP).map(Vec::len).ok_or_else(|| {
        FeatureError::Invalid(format!(
            "df.{EVENT_TIMESTAMP}: missing; give each row's event time (RFC 3339, UTC)"
        ))
    })?;
    if n > MAX_PUSH_ROWS {
        return Err(FeatureError::Invalid(format!(
            "df: {n} rows; at most {MAX_PUSH_ROWS} per push"
        )));
    }
    for (k, v) in df {
        if v.len() != n {
            return Err(FeatureError::Invalid(format!(
                "df.{k} has {} values, {EVENT_TIMESTAMP} has {n}; give every column one value per row",
                v.len()
            )));
        }
        let known = k == EVENT_TIMESTAMP
            || k == CREATED_TIMESTAMP
            || view.join_keys.iter().any(|j| j.name == *k)
            || view.feature(k).is_some();
        if !known {
            return Err(FeatureError::Invalid(format!(
                "df.{k}: not a join key, timestamp or feature of feature view \"{}\"",
                view.name
            )));
        }
    }
    let schema = offline_schema(view);
    let mut cols: Vec<ArrayRef> = Vec::new();
    for field in schema.fields() {
        let name = field.name();
        let values = match df.get(name) {
            Some(v) => v.as_slice(),
            None if name == CREATED_TIMESTAMP => &[],
            None => {
                return Err(FeatureError::Invalid(format!(
                    "df.{name}: missing; feature view \"{}\" needs it",
                    view.name
                )));
            }
        };
        let at = |i: usize| format!("df.{name}[{i}]");
        let arr: ArrayRef = match field.data_type() {
            DataType::Utf8 => Arc::new(StringArray::from(
                (0..n)
                    .map(|i| match values.get(i) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s.clone())),
                        Some(v) => Err(FeatureError::Invalid(format!(
                            "{}: {v} is not a string",
                            at(i)
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
            DataType::Int64 => Arc::new(Int64Array::from(
                (0..n)
                    .map(|i| match values.get(i) {
                        None | Some(Value::Null) => Ok(None),
                        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                            FeatureError::Invalid(format!("{}: {v} is not an int64", at(i)))
                        }),
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
            DataType::Float64 => Arc::new(Float64Array::from(
                (0..n)
                    .map(|i| match values.get(i) {
                        None | Some(Value::Null) => Ok(None),
                        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                            FeatureError::Invalid(format!("{}: {v} is not a float64", at(i)))
                        }),
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
            DataType::Boolean => Arc::new(BooleanArray::from(
                (0..n)
                    .map(|i| match values.get(i) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::Bool(b)) => Ok(Some(*b)),
                        Some(v) => Err(FeatureError::Invalid(format!(
                            "{}: {v} is not a bool",
                            at(i)
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?,
            )),
            _ => Arc::new(
                TimestampMicrosecondArray::from(
                    (0..n)
                        .map(|i| match values.get(i) {
                            None | Some(Value::Null) if name == CREATED_TIMESTAMP => Ok(None),
                            Some(Value::String(s)) => parse_ts(&at(i), s).map(Some),
                            Some(v) => Err(FeatureError::Invalid(format!(
                                "{}: {v} is not an RFC 3339 timestamp",
                                at(i)
                            ))),
                            None => Err(FeatureError::Invalid(format!("{}: missing", at(i)))),
                        })
                        .collect::<Result<Vec<_>>>()?,
                )
                .with_timezone("UTC"),
            ),
        };
        cols.push(arr);
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}
