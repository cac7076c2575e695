//! Feature-store definitions: entities, sources, feature views and feature
//! services, read from TOML (`deny_unknown_fields`) and validated into the
//! runtime types the rest of the crate uses. Every validation error names
//! the definition, the field and the fix. This module owns parsing and
//! validation only; it reads no data.
//!
//! ```toml
//! [store]
//! offline = "data/offline"     # directory (relative to this file) or s3://bucket/prefix
//! online = "data/online.redb"  # redb file, or redis://host:port
//!
//! [[entity]]
//! name = "user"
//! join_keys = [{ name = "user_id", type = "string" }]
//!
//! [[source]]
//! name = "transactions"
//! path = "data/transactions.csv"   # .csv or .parquet; a directory; or s3://bucket/key
//! event_timestamp = "event_ts"
//! created_timestamp = "created_ts" # optional
//!
//! [[feature_view]]
//! name = "user_stats"
//! entities = ["user"]
//! source = "transactions"
//! ttl = "30days"                    # optional; no TTL = no age limit
//! transformation = "SELECT ... FROM source"   # optional, DataFusion SQL
//! features = [{ name = "amount", type = "float64" }]
//!
//! [[feature_service]]
//! name = "fraud_v1"
//! features = ["user_stats:amount", "merchant_stats:*"]
//! fallback = "last_value"          # when the online store fails: last_value, default or error (the default)
//! fallback_max_age = "1h"          # optional: the oldest last value served
//!
//! # A feature's default (for fallback = "default", and after a missing last value):
//! # features = [{ name = "amount", type = "float64", default = 0.0 }]
//!
//! [store.online_breaker]           # the circuit breaker around online-store calls (docs/resilience.md)
//! failure_rate_threshold = 50      # percent
//!
//! [push]
//! max_clock_skew = "5m"   # pushed event times may be at most this far ahead of the server's clock
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use greenbelt_core::breaker::BreakerConfig;
use serde::{Deserialize, Serialize};

use crate::contracts::{Contract, ContractSpec};
use crate::error::{FeatureError, Result};
use crate::time::parse_duration;

/// Value types of join keys and features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// true or false.
    Bool,
}

impl ValueType {
    /// The Arrow type values of this type are held in.
    pub fn arrow(self) -> datafusion::arrow::datatypes::DataType {
        use datafusion::arrow::datatypes::DataType;
        match self {
            ValueType::String => DataType::Utf8,
            ValueType::Int64 => DataType::Int64,
            ValueType::Float64 => DataType::Float64,
            ValueType::Bool => DataType::Boolean,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Int64 => "int64",
            ValueType::Float64 => "float64",
            ValueType::Bool => "bool",
        }
    }
}

// ---------- the file as written ----------

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsFile {
    /// Where the offline and online stores are, and the online store's
    /// resilience settings.
    #[serde(default)]
    pub store: StoreSpec,
    /// Entities: what features are about, identified by join keys.
    #[serde(default, rename = "entity")]
    pub entities: Vec<EntitySpec>,
    /// Sources: the files (CSV or Parquet) feature views are computed from.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
    /// Feature views: features of one or more entities, computed from a
    /// source.
    #[serde(default, rename = "feature_view")]
    pub feature_views: Vec<FeatureViewSpec>,
    /// Feature services: the features a model reads, in order.
    #[serde(default, rename = "feature_service")]
    pub feature_services: Vec<FeatureServiceSpec>,
    /// What `POST /features/push` accepts.
    #[serde(default)]
    pub push: PushSpec,
}

/// `[push]`: what `POST /features/push` accepts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushSpec {
    /// How far ahead of the server's clock a pushed event time may be
    /// (humantime; default [`DEFAULT_MAX_CLOCK_SKEW`]). A value from the
    /// future would never expire and would shadow every later push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_MAX_CLOCK_SKEW))]
    pub max_clock_skew: Option<String>,
}

/// The default `[push] max_clock_skew`.
pub const DEFAULT_MAX_CLOCK_SKEW: &str = "5m";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Offline store: a directory (relative paths are relative to the file)
    /// or `s3://bucket/prefix`.
    #[serde(default = "default_offline")]
    pub offline: String,
    /// Online store: a redb file path, or a `redis://` URL.
    #[serde(default = "default_online")]
    pub online: String,
    /// Timeout of one online-store read (humantime; default
    /// [`DEFAULT_ONLINE_TIMEOUT`]); never more than half the serving
    /// request's remaining budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_ONLINE_TIMEOUT))]
    pub online_timeout: Option<String>,
    /// How long a server caches an online value in memory (humantime;
    /// default [`DEFAULT_ONLINE_CACHE_TTL`], never longer than the view's
    /// TTL); "0s" turns the cache off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_ONLINE_CACHE_TTL))]
    pub online_cache_ttl: Option<String>,
    /// Most entity keys whose last value is kept for `fallback = "last_value"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = DEFAULT_STALE_CACHE_ENTRIES))]
    pub stale_cache_entries: Option<u64>,
    /// The circuit breaker around online-store calls (resilience4j's
    /// settings; docs/resilience.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = BreakerSpec::written(&default_online_breaker())))]
    pub online_breaker: Option<BreakerSpec>,
}

/// The default `[store] online_timeout`.
pub const DEFAULT_ONLINE_TIMEOUT: &str = "250ms";
/// The default `[store] online_cache_ttl`.
pub const DEFAULT_ONLINE_CACHE_TTL: &str = "60s";
/// The default `[store] stale_cache_entries`.
pub const DEFAULT_STALE_CACHE_ENTRIES: u64 = 100_000;

/// `[store.online_breaker]`: resilience4j's settings (see
/// `greenbelt_core::breaker`); durations are humantime text.
pub use greenbelt_core::breaker::BreakerSpec;

/// The online store's breaker defaults: Redis answers in about a
/// millisecond, so 100 ms is slow.
pub fn default_online_breaker() -> BreakerConfig {
    BreakerConfig {
        slow_call_duration: Duration::from_millis(100),
        ..BreakerConfig::default()
    }
}

/// `[store.online_breaker]` validated; errors name `[store.online_breaker] <field>`.
pub fn online_breaker(spec: &BreakerSpec) -> Result<BreakerConfig> {
    const WHAT: &str = "[store.online_breaker]";
    spec.to_config(WHAT, default_online_breaker(), |field, text| {
        let us = parse_duration(&format!("{WHAT} {field}"), text).map_err(|e| e.to_string())?;
        Ok(Duration::from_micros(us.max(0) as u64))
    })
    .map_err(FeatureError::Invalid)
}

/// What a read of a feature service serves when the online store fails.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Fail the read (503): today's behaviour.
    #[default]
    Error,
    /// The last value this server read for the entity (status `STALE`, with
    /// its age), else the feature's default, else fail.
    LastValue,
    /// The feature's default from its definition (status `DEFAULT`).
    Default,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Error => "error",
            Fallback::LastValue => "last_value",
            Fallback::Default => "default",
        }
    }
}

/// The online store's resilience settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineSettings {
    /// Timeout of one read.
    pub timeout: Duration,
    /// The in-memory read cache's entry lifetime; zero: no cache.
    pub cache_ttl: Duration,
    pub stale_cache_entries: u64,
    pub breaker: BreakerConfig,
}

fn default_offline() -> String {
    "data/offline".into()
}
fn default_online() -> String {
    "data/online.redb".into()
}

impl Default for StoreSpec {
    fn default() -> Self {
        StoreSpec {
            offline: default_offline(),
            online: default_online(),
            online_timeout: None,
            online_cache_ttl: None,
            stale_cache_entries: None,
            online_breaker: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The column's name in the source (and the feature's name).
    pub name: String,
    /// `string`, `int64`, `float64` or `bool`.
    #[serde(rename = "type")]
    pub dtype: ValueType,
    /// A feature's value when the online store fails and its service's
    /// fallback is `default` (or `last_value` without a last value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    /// The entity's name, used by feature views' `entities`.
    pub name: String,
    /// The key columns that identify one entity, e.g.
    /// `[{ name = "user_id", type = "string" }]`.
    pub join_keys: Vec<ColumnSpec>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The source's name, used by feature views' `source`.
    pub name: String,
    /// A file or a directory of files (relative to the definitions file),
    /// or `s3://bucket/key` (a key ending in `/` is a directory).
    pub path: String,
    /// `csv` or `parquet`; by default from the path's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SourceFormat>,
    /// The column with each row's event time.
    pub event_timestamp: String,
    /// The column with the time each row was written; breaks ties between
    /// rows of the same event time, and `as_of_known_time` retrieval uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp: Option<String>,
    /// The data contract the source's rows are checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureViewSpec {
    /// The view's name, used by feature services as `view:feature`.
    pub name: String,
    /// The entities the view's rows are keyed by (their join keys).
    pub entities: Vec<String>,
    /// The source the view is computed from.
    pub source: String,
    /// The features: columns of the source (or of `transformation`'s result).
    pub features: Vec<ColumnSpec>,
    /// A value older than this (by its event time) counts as missing
    /// (humantime, e.g. "30days"); unset: no age limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// DataFusion SQL over the table `source`; its result must have the join
    /// keys, the event (and created) timestamp columns and the features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformation: Option<String>,
    /// Write this view to the online store when materializing (default true).
    #[serde(default = "yes")]
    pub online: bool,
    /// Freshness SLA for the canary and metrics (humantime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_sla: Option<String>,
    /// The data contract the view's rows are checked against when
    /// materializing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractSpec>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureServiceSpec {
    /// The service's name, used by models' `[features] service`.
    pub name: String,
    /// `view:feature` or `view:*`.
    pub features: Vec<String>,
    /// What a read serves when the online store fails: `error`,
    /// `last_value` or `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = Fallback::default()))]
    pub fallback: Option<Fallback>,
    /// With `last_value`: the oldest last value served (humantime); older
    /// ones fall to the default. Default: no limit (the view's TTL still
    /// applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_max_age: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// ---------- validated ----------

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub dtype: ValueType,
    /// Features only: the fallback value (checked against `dtype`).
    pub default: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub name: String,
    pub join_keys: Vec<Column>,
}

/// Where a source, an entity file or the offline store lives: a local path
/// or an S3 object or prefix (`s3://bucket/key`). S3 settings and
/// credentials come from the standard AWS environment variables (see
/// `source::s3_store`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    Local(PathBuf),
    /// `key` has no leading `/`; a trailing `/` marks a directory (prefix);
    /// empty is the bucket's root.
    S3 {
        bucket: String,
        key: String,
    },
}

impl Location {
    /// Parse `s3://bucket/key` or a path; a relative path resolves against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Location> {
        if let Some(rest) = s3_rest(text) {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                return Err(FeatureError::Invalid(format!(
                    "\"{text}\" has no valid bucket name (3-63 lowercase letters, digits, '-' or '.'); write s3://BUCKET/KEY"
                )));
            }
            let key = key.trim_start_matches('/');
            if key.contains("//") {
                return Err(FeatureError::Invalid(format!(
                    "\"{text}\" has an empty path segment (//); remove it"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if text.contains("://") {
            return Err(FeatureError::Invalid(format!(
                "\"{text}\" is not a local path or an s3:// URL; other object stores are not supported"
            )));
        }
        let p = Path::new(text);
        Ok(Location::Local(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }))
    }

    /// The location a path value holds (as [`Definitions::offline_path`] and
    /// [`Source::path`] do): `s3://...` text is S3, anything else local.
    pub fn from_path(p: &Path) -> Result<Location> {
        match p.to_str() {
            Some(t) if s3_rest(t).is_some() => Location::parse(t, Path::new("")),
            _ => Ok(Location::Local(p.to_path_buf())),
        }
    }

    /// The location as a path value: the local path, or the `s3://` URL text.
    pub fn to_path(&self) -> PathBuf {
        match self {
            Location::Local(p) => p.clone(),
            s3 => PathBuf::from(s3.to_string()),
        }
    }

    /// `a/b` under this location (a directory or prefix).
    pub fn join(&self, rel: &str) -> Location {
        match self {
            Location::Local(p) => Location::Local(p.join(rel)),
            Location::S3 { bucket, key } => {
                let base = key.trim_end_matches('/');
                Location::S3 {
                    bucket: bucket.clone(),
                    key: if base.is_empty() {
                        rel.to_string()
                    } else {
                        format!("{base}/{rel}")
                    },
                }
            }
        }
    }

    /// The file name's extension (without the dot), if any.
    pub fn extension(&self) -> Option<String> {
        match self {
            Location::Local(p) => p.extension().map(|e| e.to_string_lossy().into_owned()),
            Location::S3 { key, .. } => {
                let name = key.rsplit('/').next().unwrap_or("");
                name.rsplit_once('.')
                    .filter(|(stem, _)| !stem.is_empty())
                    .map(|(_, e)| e.to_string())
            }
        }
    }
}

fn s3_rest(text: &str) -> Option<&str> {
    text.strip_prefix("s3://")
        .or_else(|| text.strip_prefix("S3://"))
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    /// The path as resolved (for an S3 source, the `s3://` URL text).
    pub path: PathBuf,
    /// Where the data is.
    pub location: Location,
    pub format: SourceFormat,
    pub event_timestamp: String,
    pub created_timestamp: Option<String>,
    pub contract: Option<Contract>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureView {
    pub name: String,
    pub entities: Vec<String>,
    /// The join keys of all its entities, in order.
    pub join_keys: Vec<Column>,
    pub features: Vec<Column>,
    /// Maximum age of a value, microseconds; `None` = no limit.
    pub ttl_us: Option<i64>,
    pub source: String,
    pub transformation: Option<String>,
    pub online: bool,
    pub freshness_sla_us: Option<i64>,
    pub contract: Option<Contract>,
}

impl FeatureView {
    pub fn feature(&self, name: &str) -> Option<&Column> {
        self.features.iter().find(|f| f.name == name)
    }
}

/// One feature of one view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureRef {
    pub view: String,
    pub feature: String,
}

impl FeatureRef {
    /// Parse `view:feature`.
    pub fn parse(s: &str) -> Result<FeatureRef> {
        match s.split_once(':') {
            Some((v, f)) if !v.is_empty() && !f.is_empty() => Ok(FeatureRef {
                view: v.to_string(),
                feature: f.to_string(),
            }),
            _ => Err(FeatureError::Invalid(format!(
                "feature reference \"{s}\" must be written view:feature (or view:* in a service)"
            ))),
        }
    }
}

impl std::fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureService {
    pub name: String,
    pub features: Vec<FeatureRef>,
    pub fallback: Fallback,
    /// With `last_value`: the oldest last value served.
    pub fallback_max_age: Option<Duration>,
}

/// Validated definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Definitions {
    /// The offline store as a path value: the resolved directory, or the
    /// `s3://` URL text ([`crate::offline::OfflineStore::open`] takes either).
    pub offline_path: PathBuf,
    /// The offline store's location.
    pub offline: Location,
    pub online_url: String,
    pub entities: BTreeMap<String, Entity>,
    pub sources: BTreeMap<String, Source>,
    pub views: BTreeMap<String, FeatureView>,
    pub services: BTreeMap<String, FeatureService>,
    /// `[push] max_clock_skew` in microseconds.
    pub push_max_clock_skew_us: i64,
    /// `[store]` online timeout, stale cache and breaker.
    pub online: OnlineSettings,
    /// The file as parsed (for recording and diffs).
    pub spec: DefinitionsFile,
}

/// A feature's `default` must have the feature's type.
fn check_default(what: &str, f: &ColumnSpec) -> Result<()> {
    let Some(d) = &f.default else {
        return Ok(());
    };
    let ok = match f.dtype {
        ValueType::Float64 => d.is_number(),
        ValueType::Int64 => d.is_i64(),
        ValueType::Bool => d.is_boolean(),
        ValueType::String => d.is_string(),
    };
    if ok {
        Ok(())
    } else {
        Err(FeatureError::Invalid(format!(
            "{what}: feature \"{}\": default = {d} is not a {}",
            f.name,
            f.dtype.name()
        )))
    }
}

/// Whether `name` may name an entity, source, view, service, join key or
/// feature: 1-128 letters, digits, '_' or '-', not starting with `__gb`.
pub(crate) fn is_ident(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with("__gb")
}

fn check_ident(kind: &str, name: &str) -> Result<()> {
    if is_ident(name) {
        Ok(())
    } else {
        Err(FeatureError::Invalid(format!(
            "{kind} name \"{}\" is not valid: use 1-128 letters, digits, '_' or '-' (not starting with __gb)",
            name.chars().take(128).collect::<String>()
        )))
    }
}

impl Definitions {
    /// Read and validate a definitions file; relative paths in it are
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Definitions> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            FeatureError::Invalid(format!("cannot read definitions {}: {e}", path.display()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Definitions::parse(&text, base)
            .map_err(|e| FeatureError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parse and validate TOML text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Definitions> {
        let spec: DefinitionsFile =
            toml::from_str(text).map_err(|e| FeatureError::Invalid(e.to_string()))?;
        Definitions::from_spec(spec, base)
    }

    pub fn from_spec(spec: DefinitionsFile, base: &Path) -> Result<Definitions> {
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut entities = BTreeMap::new();
        for e in &spec.entities {
            check_ident("entity", &e.name)?;
            if e.join_keys.is_empty() {
                return Err(FeatureError::Invalid(format!(
                    "entity \"{}\": join_keys is empty; add at least one {{ name = \"...\", type = \"string\" }}",
                    e.name
                )));
            }
            let mut seen = BTreeSet::new();
            for k in &e.join_keys {
                check_ident("join key", &k.name)?;
                if !seen.insert(k.name.clone()) {
                    return Err(FeatureError::Invalid(format!(
                        "entity \"{}\": join key \"{}\" is listed twice",
                        e.name, k.name
                    )));
                }
                if matches!(k.dtype, ValueType::Float64) {
                    return Err(FeatureError::Invalid(format!(
                        "entity \"{}\": join key \"{}\" has type float64; use string, int64 or bool",
                        e.name, k.name
                    )));
                }
                if k.default.is_some() {
                    return Err(FeatureError::Invalid(format!(
                        "entity \"{}\": join key \"{}\": default is for features only; remove it",
                        e.name, k.name
                    )));
                }
            }
            let entity = Entity {
                name: e.name.clone(),
                join_keys: e
                    .join_keys
                    .iter()
                    .map(|k| Column {
                        name: k.name.clone(),
                        dtype: k.dtype,
                        default: None,
                    })
                    .collect(),
            };
            if entities.insert(e.name.clone(), entity).is_some() {
                return Err(FeatureError::Invalid(format!(
                    "entity \"{}\" is defined twice",
                    e.name
                )));
            }
        }
        let mut sources = BTreeMap::new();
        for s in &spec.sources {
            check_ident("source", &s.name)?;
            let format = match s.format {
                Some(f) => f,
                None => {
                    let lower = s.path.to_ascii_lowercase();
                    if lower.ends_with(".csv") {
                        SourceFormat::Csv
                    } else if lower.ends_with(".parquet") || lower.ends_with('/') {
                        SourceFormat::Parquet
                    } else {
                        return Err(FeatureError::Invalid(format!(
                            "source \"{}\": cannot tell the format of \"{}\"; set format = \"csv\" or \"parquet\"",
                            s.name, s.path
                        )));
                    }
                }
            };
            if s.event_timestamp.is_empty() {
                return Err(FeatureError::Invalid(format!(
                    "source \"{}\": event_timestamp is empty; name the event-time column",
                    s.name
                )));
            }
            let contract = s
                .contract
                .as_ref()
                .map(|c| Contract::from_spec(&format!("source \"{}\"", s.name), c, base))
                .transpose()?;
            let location = Location::parse(&s.path, base)
                .map_err(|e| FeatureError::Invalid(format!("source \"{}\": path {e}", s.name)))?;
            let source = Source {
                name: s.name.clone(),
                path: location.to_path(),
                location,
                format,
                event_timestamp: s.event_timestamp.clone(),
                created_timestamp: s.created_timestamp.clone(),
                contract,
            };
            if sources.insert(s.name.clone(), source).is_some() {
                return Err(FeatureError::Invalid(format!(
                    "source \"{}\" is defined twice",
                    s.name
                )));
            }
        }
        let mut views = BTreeMap::new();
        for v in &spec.feature_views {
            check_ident("feature view", &v.name)?;
            let what = format!("feature view \"{}\"", v.name);
            let source = sources.get(&v.source).ok_or_else(|| {
                FeatureError::Invalid(format!(
                    "{what}: source \"{}\" is not defined; add a [[source]] named \"{}\" or fix the name (known: {})",
                    v.source,
                    v.source,
                    sources.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            if v.entities.is_empty() {
                return Err(FeatureError::Invalid(format!(
                    "{what}: entities is empty; list at least one entity"
                )));
            }
            let mut join_keys: Vec<Column> = Vec::new();
            for en in &v.entities {
                let e = entities.get(en).ok_or_else(|| {
                    FeatureError::Invalid(format!(
                        "{what}: entity \"{en}\" is not defined; add an [[entity]] named \"{en}\" or fix the name"
                    ))
                })?;
                for k in &e.join_keys {
                    if join_keys.iter().any(|j| j.name == k.name) {
                        return Err(FeatureError::Invalid(format!(
                            "{what}: join key \"{}\" comes from two entities; give each entity its own key name",
                            k.name
                        )));
                    }
                    join_keys.push(k.clone());
                }
            }
            if v.features.is_empty() {
                return Err(FeatureError::Invalid(format!(
                    "{what}: features is empty; list at least one {{ name = \"...\", type = \"float64\" }}"
                )));
            }
            let mut names = BTreeSet::new();
            for f in &v.features {
                check_ident("feature", &f.name)?;
                if !names.insert(f.name.clone()) {
                    return Err(FeatureError::Invalid(format!(
                        "{what}: feature \"{}\" is listed twice",
                        f.name
                    )));
                }
                let reserved = join_keys.iter().any(|k| k.name == f.name)
                    || f.name == source.event_timestamp
                    || source.created_timestamp.as_deref() == Some(f.name.as_str());
                if reserved {
                    return Err(FeatureError::Invalid(format!(
                        "{what}: feature \"{}\" has the name of a join key or timestamp column; rename it in the transformation",
                        f.name
                    )));
                }
            }
            let ttl_us = v
                .ttl
                .as_deref()
                .map(|t| parse_duration(&format!("{what}: ttl"), t))
                .transpose()?;
            if ttl_us == Some(0) {
                return Err(FeatureError::Invalid(format!(
                    "{what}: ttl is 0; leave ttl out for no age limit or set a positive duration"
                )));
            }
            let freshness_sla_us = v
                .freshness_sla
                .as_deref()
                .map(|t| parse_duration(&format!("{what}: freshness_sla"), t))
                .transpose()?;
            if let Some(sql) = &v.transformation
                && !sql.to_ascii_lowercase().contains("source")
            {
                return Err(FeatureError::Invalid(format!(
                    "{what}: transformation must read the table `source` (the view's source), e.g. SELECT ... FROM source"
                )));
            }
            let contract = v
                .contract
                .as_ref()
                .map(|c| Contract::from_spec(&what, c, base))
                .transpose()?;
            let view = FeatureView {
                name: v.name.clone(),
                entities: v.entities.clone(),
                join_keys,
                features: v
                    .features
                    .iter()
                    .map(|f| {
                        check_default(&what, f)?;
                        Ok(Column {
                            name: f.name.clone(),
                            dtype: f.dtype,
                            default: f.default.clone(),
                        })
                    })
                    .collect::<Result<_>>()?,
                ttl_us,
                source: v.source.clone(),
                transformation: v.transformation.clone(),
                online: v.online,
                freshness_sla_us,
                contract,
            };
            if views.insert(v.name.clone(), view).is_some() {
                return Err(FeatureError::Invalid(format!(
                    "feature view \"{}\" is defined twice",
                    v.name
                )));
            }
        }
        let mut services = BTreeMap::new();
        for s in &spec.feature_services {
            check_ident("feature service", &s.name)?;
            let what = format!("feature service \"{}\"", s.name);
            if s.features.is_empty() {
                return Err(FeatureError::Invalid(format!(
                    "{what}: features is empty; list view:feature or view:*"
                )));
            }
            let mut refs: Vec<FeatureRef> = Vec::new();
            for text in &s.features {
                let r = FeatureRef::parse(text)
                    .map_err(|e| FeatureError::Invalid(format!("{what}: {e}")))?;
                let refs_here = expand_ref(&views, &r)
                    .map_err(|e| FeatureError::Invalid(format!("{what}: {e}")))?;
                for r in refs_here {
                    if let Some(other) = refs.iter().find(|o| o.feature == r.feature) {
                        return Err(FeatureError::Invalid(format!(
                            "{what}: feature name \"{}\" comes from both {other} and {r}; output columns are named by feature, so rename one in its view",
                            r.feature
                        )));
                    }
                    refs.push(r);
                }
            }
            let fallback = s.fallback.unwrap_or_default();
            if fallback == Fallback::Default {
                for r in &refs {
                    let has = views
                        .get(&r.view)
                        .and_then(|v| v.feature(&r.feature))
                        .is_some_and(|f| f.default.is_some());
                    if !has {
                        return Err(FeatureError::Invalid(format!(
                            "{what}: fallback = \"default\" but feature \"{r}\" has no default; add default = <value> to it in feature view \"{}\" or use fallback = \"last_value\"",
                            r.view
                        )));
                    }
                }
            }
            let fallback_max_age = match &s.fallback_max_age {
                None => None,
                Some(_) if fallback != Fallback::LastValue => {
                    return Err(FeatureError::Invalid(format!(
                        "{what}: fallback_max_age is only for fallback = \"last_value\" (fallback is \"{}\")",
                        fallback.as_str()
                    )));
                }
                Some(t) => Some(Duration::from_micros(
                    parse_duration(&format!("{what}: fallback_max_age"), t)?.max(0) as u64,
                )),
            };
            let service = FeatureService {
                name: s.name.clone(),
                features: refs,
                fallback,
                fallback_max_age,
            };
            if services.insert(s.name.clone(), service).is_some() {
                return Err(FeatureError::Invalid(format!(
                    "feature service \"{}\" is defined twice",
                    s.name
                )));
            }
        }
        let offline = Location::parse(&spec.store.offline, base)
            .map_err(|e| FeatureError::Invalid(format!("[store] offline: {e}")))?;
        let offline_path = offline.to_path();
        let online = OnlineSettings {
            timeout: Duration::from_micros(
                parse_duration(
                    "[store] online_timeout",
                    spec.store
                        .online_timeout
                        .as_deref()
                        .unwrap_or(DEFAULT_ONLINE_TIMEOUT),
                )?
                .max(1) as u64,
            ),
            cache_ttl: Duration::from_micros(
                parse_duration(
                    "[store] online_cache_ttl",
                    spec.store
                        .online_cache_ttl
                        .as_deref()
                        .unwrap_or(DEFAULT_ONLINE_CACHE_TTL),
                )?
                .max(0) as u64,
            ),
            stale_cache_entries: spec
                .store
                .stale_cache_entries
                .unwrap_or(DEFAULT_STALE_CACHE_ENTRIES),
            breaker: match &spec.store.online_breaker {
                Some(b) => online_breaker(b)?,
                None => default_online_breaker(),
            },
        };
        let online_url = if spec.store.online.starts_with("redis://")
            || spec.store.online.starts_with("rediss://")
        {
            spec.store.online.clone()
        } else {
            resolve(&spec.store.online).to_string_lossy().into_owned()
        };
        let push_max_clock_skew_us = parse_duration(
            "[push] max_clock_skew",
            spec.push
                .max_clock_skew
                .as_deref()
                .unwrap_or(DEFAULT_MAX_CLOCK_SKEW),
        )?;
        Ok(Definitions {
            offline_path,
            offline,
            online_url,
            entities,
            sources,
            views,
            services,
            push_max_clock_skew_us,
            online,
            spec,
        })
    }

    pub fn view(&self, name: &str) -> Result<&FeatureView> {
        self.views.get(name).ok_or_else(|| {
            FeatureError::NotFound(format!(
                "feature view \"{name}\" is not defined (known: {})",
                self.views.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn source_of(&self, view: &FeatureView) -> Result<&Source> {
        self.sources.get(&view.source).ok_or_else(|| {
            FeatureError::NotFound(format!(
                "feature view \"{}\": source \"{}\" is not defined",
                view.name, view.source
            ))
        })
    }

    pub fn service(&self, name: &str) -> Result<&FeatureService> {
        self.services.get(name).ok_or_else(|| {
            FeatureError::NotFound(format!(
                "feature service \"{name}\" is not defined (known: {})",
                self.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Resolve `view:feature` / `view:*` texts to checked references.
    pub fn resolve_features(&self, texts: &[String]) -> Result<Vec<FeatureRef>> {
        let mut out: Vec<FeatureRef> = Vec::new();
        for t in texts {
            let r = FeatureRef::parse(t)?;
            for r in expand_ref(&self.views, &r)? {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

fn expand_ref(views: &BTreeMap<String, FeatureView>, r: &FeatureRef) -> Result<Vec<FeatureRef>> {
    let view = views.get(&r.view).ok_or_else(|| {
        FeatureError::NotFound(format!(
            "feature view \"{}\" in \"{r}\" is not defined (known: {})",
            r.view,
            views.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    if r.feature == "*" {
        return Ok(view
            .features
            .iter()
            .map(|f| FeatureRef {
                view: view.name.clone(),
                feature: f.name.clone(),
            })
            .collect());
    }
    if view.feature(&r.feature).is_none() {
        return Err(FeatureError::NotFound(format!(
            "feature \"{}\" is not in feature view \"{}\" (it has: {})",
            r.feature,
            view.name,
            view.features
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(vec![r.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_paths_and_s3_urls() {
        let base = Path::new("/base");
        assert_eq!(
            Location::parse("data/x.csv", base).unwrap(),
            Location::Local(PathBuf::from("/base/data/x.csv"))
        );
        let s3 = Location::parse("s3://my-bucket/dir/x.parquet", base).unwrap();
        assert_eq!(
            s3,
            Location::S3 {
                bucket: "my-bucket".into(),
                key: "dir/x.parquet".into()
            }
        );
        assert_eq!(s3.extension().as_deref(), Some("parquet"));
        assert_eq!(s3.to_string(), "s3://my-bucket/dir/x.parquet");
        // The path value round-trips.
        assert_eq!(Location::from_path(&s3.to_path()).unwrap(), s3);
        let dir = Location::parse("s3://my-bucket/dir/", base).unwrap();
        assert_eq!(dir.extension(), None);
        assert_eq!(dir.join("a/b").to_string(), "s3://my-bucket/dir/a/b");
        let root = Location::parse("s3://my-bucket", base).unwrap();
        assert_eq!(root.join("v").to_string(), "s3://my-bucket/v");
        for bad in [
            "s3://",
            "s3://B",
            "s3://ab/x",
            "s3://a_b/x",
            "s3://bucket/a//b",
        ] {
            assert!(Location::parse(bad, base).is_err(), "{bad}");
        }
        let e = Location::parse("gs://bucket/x", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn s3_store_and_source_paths_are_kept_as_urls() {
        let d = Definitions::parse(
            r#"
[store]
offline = "s3://lake/features/offline"
[[entity]]
name = "user"
join_keys = [{ name = "user_id", type = "string" }]
[[source]]
name = "tx"
path = "s3://lake/raw/tx/"
event_timestamp = "ts"
[[feature_view]]
name = "v"
entities = ["user"]
source = "tx"
features = [{ name = "amount", type = "float64" }]
"#,
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(d.offline_path, Path::new("s3://lake/features/offline"));
        assert_eq!(
            d.offline,
            Location::S3 {
                bucket: "lake".into(),
                key: "features/offline".into()
            }
        );
        assert_eq!(d.sources["tx"].format, SourceFormat::Parquet);
        assert_eq!(d.sources["tx"].location.to_string(), "s3://lake/raw/tx/");
        let e = Definitions::parse("[store]\noffline = \"s3://\"\n", Path::new("/base"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[store] offline") && e.contains("bucket"), "{e}");
    }
}
