//! Feature-store definitions: entities, sources, feature views and feature
//! services, read from TOML (`deny_unknown_fields`) and validated into the
//! runtime types the rest of the crate uses. Every validation error names
//! the definition, the field and the fix. This module owns parsing and
//! validation only; it reads no data.
//!
//! ```toml
//! [store]
//! offline = "data/offline"     # directory of the offline store (relative to this file)
//! online = "data/online.redb"  # redb file, or redis://host:port
//!
//! [[entity]]
//! name = "user"
//! join_keys = [{ name = "user_id", type = "string" }]
//!
//! [[source]]
//! name = "transactions"
//! path = "data/transactions.csv"   # .csv or .parquet
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
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contracts::{Contract, ContractSpec};
use crate::error::{FeatureError, Result};
use crate::time::parse_duration;

/// Value types of join keys and features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    String,
    Int64,
    Float64,
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsFile {
    #[serde(default)]
    pub store: StoreSpec,
    #[serde(default, rename = "entity")]
    pub entities: Vec<EntitySpec>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
    #[serde(default, rename = "feature_view")]
    pub feature_views: Vec<FeatureViewSpec>,
    #[serde(default, rename = "feature_service")]
    pub feature_services: Vec<FeatureServiceSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// Offline store directory (relative paths are relative to the file).
    #[serde(default = "default_offline")]
    pub offline: String,
    /// Online store: a redb file path, or a `redis://` URL.
    #[serde(default = "default_online")]
    pub online: String,
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub dtype: ValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    pub name: String,
    pub join_keys: Vec<ColumnSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Csv,
    Parquet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: String,
    /// A file or a directory of files (relative to the definitions file).
    pub path: String,
    /// `csv` or `parquet`; by default from the path's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SourceFormat>,
    pub event_timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureViewSpec {
    pub name: String,
    pub entities: Vec<String>,
    pub source: String,
    pub features: Vec<ColumnSpec>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureServiceSpec {
    pub name: String,
    /// `view:feature` or `view:*`.
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// ---------- validated ----------

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub dtype: ValueType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub name: String,
    pub join_keys: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub path: PathBuf,
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
}

/// Validated definitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Definitions {
    pub offline_path: PathBuf,
    pub online_url: String,
    pub entities: BTreeMap<String, Entity>,
    pub sources: BTreeMap<String, Source>,
    pub views: BTreeMap<String, FeatureView>,
    pub services: BTreeMap<String, FeatureService>,
    /// The file as parsed (for recording and diffs).
    pub spec: DefinitionsFile,
}

fn check_ident(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with("__gb");
    if ok {
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
            }
            let entity = Entity {
                name: e.name.clone(),
                join_keys: e
                    .join_keys
                    .iter()
                    .map(|k| Column {
                        name: k.name.clone(),
                        dtype: k.dtype,
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
            let source = Source {
                name: s.name.clone(),
                path: resolve(&s.path),
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
                    .map(|f| Column {
                        name: f.name.clone(),
                        dtype: f.dtype,
                    })
                    .collect(),
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
            let service = FeatureService {
                name: s.name.clone(),
                features: refs,
            };
            if services.insert(s.name.clone(), service).is_some() {
                return Err(FeatureError::Invalid(format!(
                    "feature service \"{}\" is defined twice",
                    s.name
                )));
            }
        }
        let offline_path = resolve(&spec.store.offline);
        let online_url = if spec.store.online.starts_with("redis://") {
            spec.store.online.clone()
        } else {
            resolve(&spec.store.online).to_string_lossy().into_owned()
        };
        Ok(Definitions {
            offline_path,
            online_url,
            entities,
            sources,
            views,
            services,
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
