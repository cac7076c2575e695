//! `greenbelt features import-feast`: a Feast feature repository's applied
//! definitions, as `feast registry-dump` prints them (Feast's proto JSON:
//! camelCase field names, default values left out), turned into Greenbelt's
//! features.toml. What maps is written; what does not (on-demand and stream
//! feature views, sources other than files, list-typed features, ...) is
//! listed in [`Skipped`] with the reason, never dropped silently. The
//! Feast shapes stay in this module: the rest of the crate sees only
//! [`DefinitionsFile`]. The written file is validated with
//! [`Definitions::parse`] before it is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::defs::{
    ColumnSpec, Definitions, DefinitionsFile, EntitySpec, FeatureServiceSpec, FeatureViewSpec,
    SourceFormat, SourceSpec, ValueType, is_ident,
};
use crate::error::{FeatureError, Result};

/// One Feast definition (or part of one) that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// What, e.g. `on-demand feature view "conv_rate_per_km"`.
    pub what: String,
    /// Why, and what to do instead when there is something.
    pub why: String,
}

/// What [`convert`] made of a registry dump.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The Feast project's name, when the dump has one.
    pub project: Option<String>,
    pub spec: DefinitionsFile,
    pub skipped: Vec<Skipped>,
}

/// How to run an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The JSON `feast registry-dump` printed, or a Feast repository
    /// (a directory with feature_store.yaml) to run it in.
    pub source: PathBuf,
    /// The features.toml to write.
    pub output: PathBuf,
    /// The directory Feast's relative file paths are relative to (the
    /// repository); default: the source directory, or the JSON file's.
    pub repo_dir: Option<PathBuf>,
    /// The `feast` program to run for a repository directory.
    pub feast_program: String,
    /// Replace `output` when it exists.
    pub overwrite: bool,
}

/// What an import wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub output: PathBuf,
    pub project: Option<String>,
    pub entities: Vec<String>,
    pub sources: Vec<String>,
    pub feature_views: Vec<String>,
    pub feature_services: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// Read the source, convert it, check the result loads, write `output`.
pub fn import(opts: &ImportOptions) -> Result<ImportReport> {
    if opts.output.exists() && !opts.overwrite {
        return Err(FeatureError::Invalid(format!(
            "{} exists; choose another --output or pass --force to replace it",
            opts.output.display()
        )));
    }
    let (json, default_repo) = read_source(&opts.source, &opts.feast_program)?;
    let repo_dir = opts.repo_dir.clone().unwrap_or(default_repo);
    let out_dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let converted = convert(&json, &repo_dir, &out_dir)
        .map_err(|e| FeatureError::Invalid(format!("{}: {e}", opts.source.display())))?;
    let text = render(&converted);
    Definitions::parse(&text, &out_dir).map_err(|e| {
        FeatureError::Invalid(format!(
            "the definitions imported from {} do not validate ({e}); please report this with the registry dump",
            opts.source.display()
        ))
    })?;
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| FeatureError::Io(format!("creating {}: {e}", out_dir.display())))?;
    std::fs::write(&opts.output, text)
        .map_err(|e| FeatureError::Io(format!("writing {}: {e}", opts.output.display())))?;
    let names = |v: Vec<&String>| v.into_iter().cloned().collect();
    let spec = &converted.spec;
    Ok(ImportReport {
        output: opts.output.clone(),
        project: converted.project.clone(),
        entities: names(spec.entities.iter().map(|e| &e.name).collect()),
        sources: names(spec.sources.iter().map(|s| &s.name).collect()),
        feature_views: names(spec.feature_views.iter().map(|v| &v.name).collect()),
        feature_services: names(spec.feature_services.iter().map(|s| &s.name).collect()),
        skipped: converted.skipped,
    })
}

/// The dump's JSON and the directory its relative paths are relative to:
/// a file is read; a Feast repository directory is dumped with
/// `PROGRAM -c DIR registry-dump`.
pub fn read_source(source: &Path, program: &str) -> Result<(String, PathBuf)> {
    if source.is_dir() {
        if !source.join("feature_store.yaml").is_file() {
            return Err(FeatureError::Invalid(format!(
                "{} is a directory without feature_store.yaml, so not a Feast repository; pass the repository or the JSON `feast registry-dump` prints",
                source.display()
            )));
        }
        let json = registry_dump(program, source)?;
        return Ok((json, source.to_path_buf()));
    }
    let json = std::fs::read_to_string(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FeatureError::Invalid(format!(
                "{} does not exist; pass the JSON `feast registry-dump` prints (feast registry-dump > dump.json) or a Feast repository directory",
                source.display()
            ))
        } else {
            FeatureError::Io(format!("reading {}: {e}", source.display()))
        }
    })?;
    let dir = match source.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((json, dir))
}

/// `PROGRAM -c REPO registry-dump`'s standard output.
pub fn registry_dump(program: &str, repo: &Path) -> Result<String> {
    let out = std::process::Command::new(program)
        .arg("-c")
        .arg(repo)
        .arg("registry-dump")
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FeatureError::Invalid(format!(
                    "`{program}` is not on PATH, so the Feast repository {} cannot be dumped; install Feast (pip install feast), or run `feast -c {} registry-dump > dump.json` where it is and import dump.json, or name the program with --feast",
                    repo.display(),
                    repo.display()
                ))
            } else {
                FeatureError::Io(format!("running {program}: {e}"))
            }
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(FeatureError::Invalid(format!(
            "`{program} -c {} registry-dump` failed ({}): {}",
            repo.display(),
            out.status,
            tail.join(" | ")
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| {
        FeatureError::Invalid(format!(
            "`{program} registry-dump` printed something that is not UTF-8 text"
        ))
    })
}

// ---------- Feast's registry dump (proto JSON) ----------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dump {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    entities: Vec<Entity>,
    #[serde(default)]
    data_sources: Vec<DataSource>,
    #[serde(default)]
    feature_views: Vec<Wrapped<FeatureView>>,
    #[serde(default)]
    feature_services: Vec<Wrapped<FeatureService>>,
}

/// Keys of the dump that are not definitions to import: project metadata
/// and the online store's tables.
const NOT_DEFINITIONS: &[&str] = &[
    "project",
    "projects",
    "projectMetadata",
    "infra",
    "lastUpdated",
    "registrySchemaVersion",
    "versionId",
    "entities",
    "dataSources",
    "featureViews",
    "featureServices",
];

#[derive(Debug, Deserialize)]
struct Wrapped<T> {
    spec: T,
}

#[derive(Debug, Deserialize)]
struct Entity {
    spec: EntityDef,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntityDef {
    name: String,
    #[serde(default)]
    join_key: Option<String>,
    #[serde(default)]
    value_type: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataSource {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    timestamp_field: Option<String>,
    #[serde(default)]
    created_timestamp_column: Option<String>,
    #[serde(default)]
    file_options: Option<FileOptions>,
    #[serde(default)]
    field_mapping: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileOptions {
    #[serde(default)]
    uri: String,
    #[serde(default)]
    file_format: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    s3_endpoint_override: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeatureView {
    name: String,
    #[serde(default)]
    entities: Vec<String>,
    #[serde(default)]
    entity_columns: Vec<Field>,
    #[serde(default)]
    features: Vec<Field>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    batch_source: Option<DataSource>,
    #[serde(default)]
    stream_source: Option<DataSource>,
    /// Proto JSON leaves `false` out: absent means offline only.
    #[serde(default)]
    online: bool,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Field {
    name: String,
    #[serde(default)]
    value_type: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FeatureService {
    name: String,
    #[serde(default)]
    features: Vec<Projection>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    logging_config: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Projection {
    feature_view_name: String,
    #[serde(default)]
    feature_view_name_alias: Option<String>,
    #[serde(default)]
    feature_columns: Vec<Field>,
    #[serde(default)]
    join_key_map: BTreeMap<String, String>,
}

// ---------- the mapping ----------

/// Feast's entity for feature views without entities.
const DUMMY_ENTITY: &str = "__dummy";

/// Greenbelt's type for a Feast value type, or why there is none.
fn value_type(feast: Option<&str>) -> std::result::Result<ValueType, String> {
    match feast {
        Some("INT32" | "INT64") => Ok(ValueType::Int64),
        Some("FLOAT" | "DOUBLE") => Ok(ValueType::Float64),
        Some("STRING") => Ok(ValueType::String),
        Some("BOOL") => Ok(ValueType::Bool),
        Some(other) => Err(format!(
            "type {other} has no Greenbelt equivalent (Greenbelt has string, int64, float64 and bool)"
        )),
        None => Err("has no value type in the dump".into()),
    }
}

/// A proto Duration as JSON (`"86400s"`, `"0.5s"`) as humantime text;
/// None for zero (Feast's "no TTL").
fn ttl_text(what: &str, text: &str) -> Result<Option<String>> {
    let bad = || {
        FeatureError::Invalid(format!(
            "{what}: ttl \"{text}\" is not a protobuf duration like \"86400s\""
        ))
    };
    let secs = text.strip_suffix('s').ok_or_else(bad)?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else if frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()) {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    let d = Duration::new(whole, nanos);
    Ok((!d.is_zero()).then(|| humantime::format_duration(d).to_string()))
}

/// A source's path as written in features.toml: URLs as they are, a
/// relative path (to the Feast repository) made relative to the output's
/// directory; or why it cannot be read.
fn source_path(uri: &str, repo_dir: &Path, out_dir: &Path) -> std::result::Result<String, String> {
    let uri = uri.strip_prefix("file://").unwrap_or(uri);
    if uri.is_empty() {
        return Err("has no path".into());
    }
    if uri.starts_with("s3://") {
        return Ok(uri.to_string());
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(format!(
            "reads {scheme}:// ({uri}); Greenbelt reads local files and s3://"
        ));
    }
    let p = Path::new(uri);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        repo_dir.join(p)
    };
    Ok(relative_to(&full, out_dir).display().to_string())
}

/// `path` relative to `base` when both can be made absolute, else `path`.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (Ok(p), Ok(b)) = (std::path::absolute(path), std::path::absolute(base)) else {
        return path.to_path_buf();
    };
    let (p, b) = (normalize(&p), normalize(&b));
    let common = p
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .count();
    if common == 0 {
        return p;
    }
    let mut out = PathBuf::new();
    for _ in b.components().skip(common) {
        out.push("..");
    }
    for c in p.components().skip(common) {
        out.push(c);
    }
    out
}

/// `a/./b/../c` as `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Collects what maps and what is skipped.
struct Mapper<'a> {
    repo_dir: &'a Path,
    out_dir: &'a Path,
    skipped: Vec<Skipped>,
    spec: DefinitionsFile,
}

impl Mapper<'_> {
    fn skip(&mut self, what: impl Into<String>, why: impl Into<String>) {
        self.skipped.push(Skipped {
            what: what.into(),
            why: why.into(),
        });
    }

    fn entities(&mut self, entities: &[Entity], views: &[Wrapped<FeatureView>]) {
        // A join key's type, when its entity leaves it out: the views' entity columns.
        let mut column_types: BTreeMap<&str, &str> = BTreeMap::new();
        for v in views {
            for c in &v.spec.entity_columns {
                if let Some(t) = c.value_type.as_deref() {
                    column_types.insert(c.name.as_str(), t);
                }
            }
        }
        for e in entities {
            let e = &e.spec;
            let what = format!("entity \"{}\"", e.name);
            if e.name == DUMMY_ENTITY {
                self.skip(
                    what,
                    "Feast's placeholder for feature views without entities; Greenbelt's views are keyed by at least one entity",
                );
                continue;
            }
            if !is_ident(&e.name) {
                self.skip(
                    what,
                    "the name is not valid in Greenbelt (1-128 letters, digits, '_' or '-')",
                );
                continue;
            }
            let key = e
                .join_key
                .clone()
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| e.name.clone());
            if !is_ident(&key) {
                self.skip(
                    what,
                    format!("join key \"{key}\" is not a valid name in Greenbelt"),
                );
                continue;
            }
            let feast_type = e
                .value_type
                .as_deref()
                .filter(|t| *t != "UNKNOWN" && *t != "INVALID")
                .or_else(|| column_types.get(key.as_str()).copied());
            let dtype = match value_type(feast_type) {
                Ok(ValueType::Float64) => {
                    self.skip(
                        what,
                        "join key is a float; Greenbelt's join keys are string, int64 or bool",
                    );
                    continue;
                }
                Ok(t) => t,
                Err(why) => {
                    self.skip(what, format!("join key \"{key}\" {why}"));
                    continue;
                }
            };
            self.spec.entities.push(EntitySpec {
                name: e.name.clone(),
                join_keys: vec![ColumnSpec {
                    name: key,
                    dtype,
                    default: None,
                    description: None,
                }],
                description: e.description.clone().filter(|d| !d.is_empty()),
            });
        }
    }

    /// The source as Greenbelt writes it, or why not.
    fn source(&self, s: &DataSource) -> std::result::Result<SourceSpec, String> {
        let kind = s.kind.as_deref().unwrap_or("");
        let file = match (&s.file_options, kind) {
            (Some(f), "BATCH_FILE" | "") => f,
            (_, "PUSH_SOURCE") => {
                return Err("a push source; Greenbelt takes pushes per feature view (POST /features/push), and its views read the push source's batch source".into());
            }
            (_, "REQUEST_SOURCE") => {
                return Err("a request source (values sent with each request); Greenbelt has no request-time features".into());
            }
            (_, k) if k.starts_with("STREAM_") => {
                return Err(format!(
                    "a stream source ({k}); Greenbelt reads files and takes pushes (POST /features/push)"
                ));
            }
            (_, "") => return Err("a source of unknown type (no type and no file options)".into()),
            (_, k) => {
                return Err(format!(
                    "a {k} source; Greenbelt reads CSV and Parquet files (local or s3://)"
                ));
            }
        };
        if !is_ident(&s.name) {
            return Err(
                "the name is not valid in Greenbelt (1-128 letters, digits, '_' or '-')".into(),
            );
        }
        if let Some(fmt) = &file.file_format
            && let Some(other) = fmt.keys().find(|k| k.as_str() != "parquetFormat")
        {
            return Err(format!(
                "file format {other}; Greenbelt reads CSV and Parquet"
            ));
        }
        if !s.field_mapping.is_empty() {
            return Err(format!(
                "renames columns (field_mapping {:?}); Greenbelt reads columns by their names: rename them in the data or in a view's transformation",
                s.field_mapping
            ));
        }
        let Some(ts) = s.timestamp_field.clone().filter(|t| !t.is_empty()) else {
            return Err("has no timestamp field; Greenbelt needs each row's event time".into());
        };
        let path = source_path(&file.uri, self.repo_dir, self.out_dir)?;
        let lower = path.to_ascii_lowercase();
        // Feast's file sources are Parquet unless they say otherwise.
        let format = (!lower.ends_with(".csv") && !lower.ends_with(".parquet"))
            .then_some(SourceFormat::Parquet);
        Ok(SourceSpec {
            name: s.name.clone(),
            path,
            format,
            event_timestamp: ts,
            created_timestamp: s.created_timestamp_column.clone().filter(|c| !c.is_empty()),
            contract: None,
        })
    }

    /// Every source: the dump's list, and the views' batch sources (older
    /// Feast versions register only those).
    fn sources(&mut self, sources: &[DataSource], views: &[Wrapped<FeatureView>]) {
        let mut seen = BTreeSet::new();
        let embedded = views.iter().filter_map(|v| v.spec.batch_source.as_ref());
        for s in sources.iter().chain(embedded) {
            if !seen.insert(s.name.clone()) {
                continue;
            }
            match self.source(s) {
                Ok(spec) => {
                    if let Some(ep) = s
                        .file_options
                        .as_ref()
                        .and_then(|f| f.s3_endpoint_override.as_ref())
                    {
                        self.skip(
                            format!("source \"{}\": s3_endpoint_override \"{ep}\"", s.name),
                            "set AWS_ENDPOINT_URL for the server instead",
                        );
                    }
                    self.spec.sources.push(spec)
                }
                Err(why) => self.skip(format!("source \"{}\"", s.name), why),
            }
        }
    }

    fn views(&mut self, views: &[Wrapped<FeatureView>]) -> Result<()> {
        let entities: BTreeMap<String, String> = self
            .spec
            .entities
            .iter()
            .filter_map(|e| {
                e.join_keys
                    .first()
                    .map(|k| (e.name.clone(), k.name.clone()))
            })
            .collect();
        let sources: BTreeMap<String, SourceSpec> = self
            .spec
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        for v in views {
            let v = &v.spec;
            let what = format!("feature view \"{}\"", v.name);
            if !is_ident(&v.name) {
                self.skip(
                    what,
                    "the name is not valid in Greenbelt (1-128 letters, digits, '_' or '-')",
                );
                continue;
            }
            let real: Vec<&String> = v.entities.iter().filter(|e| *e != DUMMY_ENTITY).collect();
            if real.is_empty() {
                self.skip(
                    what,
                    "has no entities; Greenbelt's views are keyed by at least one entity",
                );
                continue;
            }
            if let Some(e) = real.iter().find(|e| !entities.contains_key(e.as_str())) {
                self.skip(what, format!("its entity \"{e}\" was not imported"));
                continue;
            }
            let Some(batch) = &v.batch_source else {
                self.skip(what, "has no batch source");
                continue;
            };
            let Some(source) = sources.get(&batch.name) else {
                self.skip(
                    what,
                    format!("its source \"{}\" was not imported", batch.name),
                );
                continue;
            };
            if let Some(stream) = &v.stream_source {
                self.skip(
                    format!("{what}: stream source \"{}\"", stream.name),
                    "imported with its batch source; push rows to the view with POST /features/push",
                );
            }
            let keys: BTreeSet<&str> = real
                .iter()
                .filter_map(|e| entities.get(e.as_str()).map(String::as_str))
                .collect();
            let mut features = Vec::new();
            for f in &v.features {
                let fwhat = format!("{what}: feature \"{}\"", f.name);
                if !is_ident(&f.name) {
                    self.skip(
                        fwhat,
                        "the name is not valid in Greenbelt (1-128 letters, digits, '_' or '-')",
                    );
                    continue;
                }
                let reserved = keys.contains(f.name.as_str())
                    || f.name == source.event_timestamp
                    || source.created_timestamp.as_deref() == Some(f.name.as_str());
                if reserved {
                    self.skip(fwhat, "has the name of a join key or timestamp column");
                    continue;
                }
                match value_type(f.value_type.as_deref()) {
                    Ok(dtype) => features.push(ColumnSpec {
                        name: f.name.clone(),
                        dtype,
                        default: None,
                        description: f.description.clone().filter(|d| !d.is_empty()),
                    }),
                    Err(why) => self.skip(fwhat, why),
                }
            }
            if features.is_empty() {
                self.skip(what, "none of its features could be imported");
                continue;
            }
            if !v.tags.is_empty() {
                self.skip(
                    format!("{what}: tags"),
                    "Greenbelt's feature views have no tags",
                );
            }
            let ttl = match &v.ttl {
                Some(t) => ttl_text(&what, t)?,
                None => None,
            };
            self.spec.feature_views.push(FeatureViewSpec {
                name: v.name.clone(),
                entities: real.into_iter().cloned().collect(),
                source: source.name.clone(),
                features,
                ttl,
                transformation: None,
                online: v.online,
                freshness_sla: None,
                contract: None,
                description: v.description.clone().filter(|d| !d.is_empty()),
            });
        }
        Ok(())
    }

    fn services(&mut self, services: &[Wrapped<FeatureService>]) {
        let views: BTreeMap<String, BTreeSet<String>> = self
            .spec
            .feature_views
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.features.iter().map(|f| f.name.clone()).collect(),
                )
            })
            .collect();
        for s in services {
            let s = &s.spec;
            let what = format!("feature service \"{}\"", s.name);
            if !is_ident(&s.name) {
                self.skip(
                    what,
                    "the name is not valid in Greenbelt (1-128 letters, digits, '_' or '-')",
                );
                continue;
            }
            let mut refs: Vec<String> = Vec::new();
            let mut names: BTreeMap<String, String> = BTreeMap::new();
            for p in &s.features {
                let view = &p.feature_view_name;
                let Some(have) = views.get(view) else {
                    self.skip(
                        format!("{what}: view \"{view}\""),
                        format!("\"{view}\" was not imported (see above)"),
                    );
                    continue;
                };
                if let Some(alias) = p
                    .feature_view_name_alias
                    .as_deref()
                    .filter(|a| !a.is_empty())
                {
                    self.skip(
                        format!("{what}: alias \"{alias}\" of view \"{view}\""),
                        "Greenbelt names a service's features by view; the view's own name is used",
                    );
                }
                if !p.join_key_map.is_empty() {
                    self.skip(
                        format!("{what}: join key map of view \"{view}\""),
                        "Greenbelt joins on the entity's own join keys",
                    );
                }
                for c in &p.feature_columns {
                    let r = format!("{view}:{}", c.name);
                    if !have.contains(&c.name) {
                        self.skip(
                            format!("{what}: {r}"),
                            "the feature was not imported (see above)",
                        );
                    } else if let Some(other) = names.get(&c.name) {
                        self.skip(
                            format!("{what}: {r}"),
                            format!("a Greenbelt service names its columns by feature, and {other} has this name"),
                        );
                    } else {
                        names.insert(c.name.clone(), r.clone());
                        refs.push(r);
                    }
                }
            }
            if s.logging_config.is_some() {
                self.skip(
                    format!("{what}: logging config"),
                    "Greenbelt logs requests with [payload_log] in greenbelt.toml",
                );
            }
            if refs.is_empty() {
                self.skip(what, "none of its features could be imported");
                continue;
            }
            self.spec.feature_services.push(FeatureServiceSpec {
                name: s.name.clone(),
                features: refs,
                fallback: None,
                fallback_max_age: None,
                description: s.description.clone().filter(|d| !d.is_empty()),
            });
        }
    }

    /// Kinds of definitions Greenbelt has no equivalent for (on-demand and
    /// stream feature views, saved datasets, permissions, ...), by name.
    fn other_kinds(&mut self, raw: &serde_json::Map<String, serde_json::Value>) {
        for (key, value) in raw {
            if NOT_DEFINITIONS.contains(&key.as_str()) {
                continue;
            }
            let Some(items) = value.as_array() else {
                continue;
            };
            let (kind, why) = kind_of(key);
            for (i, item) in items.iter().enumerate() {
                let name = item
                    .pointer("/spec/name")
                    .or_else(|| item.get("name"))
                    .and_then(serde_json::Value::as_str)
                    .map_or_else(|| format!("#{i}"), |n| format!("\"{n}\""));
                self.skip(format!("{kind} {name}"), why.clone());
            }
        }
    }
}

/// A readable name for a kind of definition in the dump, and why it is not imported.
fn kind_of(key: &str) -> (String, String) {
    match key {
        "onDemandFeatureViews" => (
            "on-demand feature view".into(),
            "computed at request time by Python; Greenbelt has no request-time transformations (compute it in the model or a view's SQL transformation)".into(),
        ),
        "streamFeatureViews" => (
            "stream feature view".into(),
            "Greenbelt reads files and takes pushes (POST /features/push); define a feature view over its batch source".into(),
        ),
        other => (
            format!("{other} entry"),
            format!("Greenbelt has no equivalent of Feast's {other}"),
        ),
    }
}

/// Convert `feast registry-dump`'s JSON. Relative file paths are relative
/// to `repo_dir` and are written relative to `out_dir` (where the
/// features.toml goes). A dump that is not JSON, or whose fields have the
/// wrong shape, is an error naming the field.
pub fn convert(json: &str, repo_dir: &Path, out_dir: &Path) -> Result<Converted> {
    let json = json.trim_start_matches('\u{feff}');
    // Some Feast versions print a line before the JSON.
    let start = json.find('{').unwrap_or(0);
    let json = json.get(start..).unwrap_or(json);
    let raw: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        FeatureError::Invalid(format!(
            "the registry dump is not JSON ({e}); pass what `feast registry-dump` prints"
        ))
    })?;
    let Some(object) = raw.as_object() else {
        return Err(FeatureError::Invalid(
            "the registry dump is not a JSON object; pass what `feast registry-dump` prints".into(),
        ));
    };
    let dump: Dump = serde_path_to_error::deserialize(&raw).map_err(|e| {
        FeatureError::Invalid(format!(
            "the registry dump: field {}: {}",
            e.path(),
            e.inner()
        ))
    })?;
    let mut m = Mapper {
        repo_dir,
        out_dir,
        skipped: Vec::new(),
        spec: DefinitionsFile::default(),
    };
    m.entities(&dump.entities, &dump.feature_views);
    m.sources(&dump.data_sources, &dump.feature_views);
    m.views(&dump.feature_views)?;
    m.services(&dump.feature_services);
    m.other_kinds(object);
    Ok(Converted {
        project: dump.project,
        spec: m.spec,
        skipped: m.skipped,
    })
}

// ---------- writing features.toml ----------

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn column(c: &ColumnSpec) -> String {
    let mut s = format!("{{ name = {}, type = {}", q(&c.name), q(c.dtype.name()));
    if let Some(d) = &c.description {
        s.push_str(&format!(", description = {}", q(d)));
    }
    s.push_str(" }");
    s
}

/// A TOML array: on one line when it is short, else one item a line.
fn list(items: &[String]) -> String {
    let one_line = format!("[{}]", items.join(", "));
    if one_line.len() <= 72 {
        return one_line;
    }
    let mut s = String::from("[\n");
    for i in items {
        s.push_str(&format!("  {i},\n"));
    }
    s.push(']');
    s
}

/// One line of a comment: no line breaks.
fn comment_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The features.toml text: a header saying where it came from and what
/// was skipped, then the definitions in Feast's order.
pub fn render(c: &Converted) -> String {
    let mut out = String::new();
    let project = c.project.as_deref().map_or(String::new(), |p| {
        format!(" project \"{}\"", comment_line(p))
    });
    out.push_str(&format!(
        "# Imported from the Feast{project} registry (feast registry-dump) by\n# `greenbelt features import-feast`. Paths are relative to this file.\n# The stores below are Greenbelt's defaults: Feast's are in its feature_store.yaml.\n"
    ));
    if !c.skipped.is_empty() {
        out.push_str("#\n# Not imported:\n");
        for s in &c.skipped {
            out.push_str(&format!(
                "#   - {}: {}\n",
                comment_line(&s.what),
                comment_line(&s.why)
            ));
        }
    }
    let spec = &c.spec;
    out.push_str(&format!(
        "\n[store]\noffline = {}\nonline = {}\n",
        q(&spec.store.offline),
        q(&spec.store.online)
    ));
    for e in &spec.entities {
        let keys: Vec<String> = e.join_keys.iter().map(column).collect();
        out.push_str(&format!(
            "\n[[entity]]\nname = {}\njoin_keys = {}\n",
            q(&e.name),
            list(&keys)
        ));
        if let Some(d) = &e.description {
            out.push_str(&format!("description = {}\n", q(d)));
        }
    }
    for s in &spec.sources {
        out.push_str(&format!(
            "\n[[source]]\nname = {}\npath = {}\n",
            q(&s.name),
            q(&s.path)
        ));
        if let Some(f) = s.format {
            let f = match f {
                SourceFormat::Csv => "csv",
                SourceFormat::Parquet => "parquet",
            };
            out.push_str(&format!("format = {}\n", q(f)));
        }
        out.push_str(&format!("event_timestamp = {}\n", q(&s.event_timestamp)));
        if let Some(c) = &s.created_timestamp {
            out.push_str(&format!("created_timestamp = {}\n", q(c)));
        }
    }
    for v in &spec.feature_views {
        let entities: Vec<String> = v.entities.iter().map(|e| q(e)).collect();
        out.push_str(&format!(
            "\n[[feature_view]]\nname = {}\nentities = {}\nsource = {}\n",
            q(&v.name),
            list(&entities),
            q(&v.source)
        ));
        if let Some(t) = &v.ttl {
            out.push_str(&format!("ttl = {}\n", q(t)));
        }
        out.push_str(&format!("online = {}\n", v.online));
        if let Some(d) = &v.description {
            out.push_str(&format!("description = {}\n", q(d)));
        }
        let features: Vec<String> = v.features.iter().map(column).collect();
        out.push_str(&format!("features = {}\n", list(&features)));
    }
    for s in &spec.feature_services {
        let features: Vec<String> = s.features.iter().map(|f| q(f)).collect();
        out.push_str(&format!(
            "\n[[feature_service]]\nname = {}\nfeatures = {}\n",
            q(&s.name),
            list(&features)
        ));
        if let Some(d) = &s.description {
            out.push_str(&format!("description = {}\n", q(d)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/feast")
    }

    fn fixture() -> Converted {
        let dir = fixture_dir();
        let json = std::fs::read_to_string(dir.join("registry-dump.json")).unwrap();
        convert(&json, &dir, &dir).unwrap()
    }

    fn skipped(c: &Converted, what: &str) -> String {
        c.skipped
            .iter()
            .find(|s| s.what == what)
            .map(|s| s.why.clone())
            .unwrap_or_else(|| panic!("{what} is not in the skipped list: {:#?}", c.skipped))
    }

    #[test]
    fn feasts_dump_maps_entities_sources_views_and_services() {
        let c = fixture();
        assert_eq!(c.project.as_deref(), Some("greenbelt_import"));
        let s = &c.spec;
        let entities: Vec<(&str, &str, ValueType)> = s
            .entities
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.join_keys[0].name.as_str(),
                    e.join_keys[0].dtype,
                )
            })
            .collect();
        assert_eq!(
            entities,
            [
                ("customer", "customer_id", ValueType::String),
                ("driver", "driver_id", ValueType::Int64)
            ]
        );
        let driver_src = s
            .sources
            .iter()
            .find(|x| x.name == "driver_stats_source")
            .unwrap();
        assert_eq!(driver_src.path, "data/driver_stats.parquet");
        assert_eq!(driver_src.event_timestamp, "event_timestamp");
        assert_eq!(driver_src.created_timestamp.as_deref(), Some("created"));
        assert_eq!(s.sources.len(), 2, "{:?}", s.sources);

        let hourly = s
            .feature_views
            .iter()
            .find(|v| v.name == "driver_hourly_stats")
            .unwrap();
        assert_eq!(hourly.ttl.as_deref(), Some("1day"));
        assert!(hourly.online);
        assert_eq!(hourly.source, "driver_stats_source");
        let f: Vec<(&str, ValueType)> = hourly
            .features
            .iter()
            .map(|f| (f.name.as_str(), f.dtype))
            .collect();
        assert_eq!(
            f,
            [
                ("conv_rate", ValueType::Float64),
                ("acc_rate", ValueType::Float64),
                ("avg_daily_trips", ValueType::Int64)
            ]
        );
        // Proto JSON leaves online = false out.
        let profile = s
            .feature_views
            .iter()
            .find(|v| v.name == "customer_profile")
            .unwrap();
        assert!(!profile.online);
        assert_eq!(profile.ttl.as_deref(), Some("30days"));
        assert_eq!(profile.features.len(), 3);

        assert_eq!(s.feature_services.len(), 1);
        assert_eq!(
            s.feature_services[0].features,
            [
                "driver_hourly_stats:conv_rate",
                "driver_hourly_stats:avg_daily_trips",
                "customer_profile:tier",
                "customer_profile:is_vip",
                "customer_profile:lifetime_value"
            ]
        );
    }

    #[test]
    fn what_does_not_map_is_listed_with_the_reason() {
        let c = fixture();
        assert!(
            skipped(&c, "on-demand feature view \"conv_rate_per_km\"").contains("request time")
        );
        assert!(skipped(&c, "source \"driver_stats_push\"").contains("push source"));
        assert!(skipped(&c, "source \"trip_request\"").contains("request source"));
        assert!(skipped(&c, "entity \"__dummy\"").contains("placeholder"));
        assert!(
            skipped(
                &c,
                "feature view \"customer_profile\": feature \"recent_orders\""
            )
            .contains("INT64_LIST")
        );
        assert!(
            skipped(
                &c,
                "feature service \"driver_activity\": view \"conv_rate_per_km\""
            )
            .contains("not imported")
        );
        assert!(
            skipped(
                &c,
                "feature service \"driver_activity\": customer_profile:recent_orders"
            )
            .contains("not imported")
        );
        assert!(skipped(&c, "feature view \"driver_hourly_stats\": tags").contains("no tags"));
    }

    #[test]
    fn the_rendered_file_parses_back_to_the_same_definitions() {
        let c = fixture();
        let text = render(&c);
        assert!(
            text.contains("#   - on-demand feature view \"conv_rate_per_km\""),
            "{text}"
        );
        let defs = Definitions::parse(&text, &fixture_dir()).unwrap();
        assert_eq!(defs.spec.entities, c.spec.entities);
        assert_eq!(defs.spec.sources, c.spec.sources);
        assert_eq!(defs.spec.feature_views, c.spec.feature_views);
        assert_eq!(defs.spec.feature_services, c.spec.feature_services);
        assert_eq!(defs.services["driver_activity"].features.len(), 5);
    }

    #[test]
    fn paths_are_written_relative_to_the_output() {
        let dir = fixture_dir();
        let json = std::fs::read_to_string(dir.join("registry-dump.json")).unwrap();
        let c = convert(&json, &dir, &dir.join("out/nested")).unwrap();
        let src = &c.spec.sources[0];
        assert_eq!(src.path, "../../data/customer_profile.parquet");
        assert_eq!(
            relative_to(Path::new("/a/b/c.parquet"), Path::new("/a/x")),
            PathBuf::from("../b/c.parquet")
        );
        assert_eq!(
            source_path("s3://bucket/k.parquet", &dir, &dir).unwrap(),
            "s3://bucket/k.parquet"
        );
        assert!(
            source_path("gs://bucket/k.parquet", &dir, &dir)
                .unwrap_err()
                .contains("gs://")
        );
    }

    #[test]
    fn a_dump_of_the_wrong_shape_is_an_error_naming_the_field() {
        let e = convert(
            r#"{"entities": [{"spec": {"name": 5}}]}"#,
            Path::new("."),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("entities[0].spec.name"), "{e}");
        let e = convert(
            r#"{"featureViews": [{"spec": {"name": "v", "features": {}}}]}"#,
            Path::new("."),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("featureViews[0].spec.features"), "{e}");
        let e = convert("not json", Path::new("."), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON"), "{e}");
        let e = convert("[1, 2]", Path::new("."), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not JSON") || e.contains("not a JSON object"),
            "{e}"
        );
        let e = convert(
            r#"{"entities": [{"spec": {"name": "e", "joinKey": "id", "valueType": "INT64"}}],
                "dataSources": [{"name": "s", "type": "BATCH_FILE", "timestampField": "ts", "fileOptions": {"uri": "a.parquet"}}],
                "featureViews": [{"spec": {"name": "v", "entities": ["e"], "ttl": "a day",
                  "batchSource": {"name": "s"}, "features": [{"name": "f", "valueType": "DOUBLE"}]}}]}"#,
            Path::new("."),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("feature view \"v\": ttl \"a day\""), "{e}");
    }

    #[test]
    fn unknown_kinds_of_definitions_are_listed_not_dropped() {
        let c = convert(
            r#"{"project": "p", "savedDatasets": [{"spec": {"name": "training_set"}}],
                "streamFeatureViews": [{"spec": {"name": "clicks"}}], "infra": [{"name": "t"}]}"#,
            Path::new("."),
            Path::new("."),
        )
        .unwrap();
        assert!(skipped(&c, "savedDatasets entry \"training_set\"").contains("no equivalent"));
        assert!(skipped(&c, "stream feature view \"clicks\"").contains("pushes"));
        assert_eq!(c.skipped.len(), 2, "{:?}", c.skipped);
    }

    #[test]
    fn ttls_are_protobuf_durations() {
        assert_eq!(ttl_text("v", "86400s").unwrap().as_deref(), Some("1day"));
        assert_eq!(ttl_text("v", "5400s").unwrap().as_deref(), Some("1h 30m"));
        assert_eq!(ttl_text("v", "0.5s").unwrap().as_deref(), Some("500ms"));
        assert_eq!(ttl_text("v", "0s").unwrap(), None);
        assert!(ttl_text("v", "1d").is_err());
        assert!(ttl_text("v", "-5s").is_err());
    }

    #[test]
    fn missing_sources_and_repositories_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_source(&dir.path().join("nope.json"), "feast")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.json does not exist") && e.contains("registry-dump"),
            "{e}"
        );
        let e = read_source(dir.path(), "feast").unwrap_err().to_string();
        assert!(e.contains("without feature_store.yaml"), "{e}");
        std::fs::write(dir.path().join("feature_store.yaml"), "project: p\n").unwrap();
        let e = read_source(dir.path(), "feast-not-installed-here")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`feast-not-installed-here` is not on PATH")
                && e.contains("pip install feast"),
            "{e}"
        );
        // A program that fails: its error comes through.
        let e = read_source(dir.path(), "false").unwrap_err().to_string();
        assert!(e.contains("registry-dump` failed"), "{e}");
    }

    #[test]
    fn import_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("features.toml");
        std::fs::write(&out, "# mine\n").unwrap();
        let mut opts = ImportOptions {
            source: fixture_dir().join("registry-dump.json"),
            output: out.clone(),
            repo_dir: None,
            feast_program: "feast".into(),
            overwrite: false,
        };
        let e = import(&opts).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        opts.overwrite = true;
        let r = import(&opts).unwrap();
        assert_eq!(r.feature_views, ["customer_profile", "driver_hourly_stats"]);
        Definitions::load(&out).unwrap();
    }
}
