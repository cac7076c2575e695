//! The model repository on disk, Triton-style:
//!
//! ```text
//! <repo>/<model>/config.toml        optional, see ModelConfig
//! <repo>/<model>/<version>/model.onnx
//! ```
//!
//! Versions are positive integers. A version policy picks which ones are
//! served (latest N, all, or a list); an unversioned request goes to the
//! newest served version. A load that fails never takes down what was
//! already serving: the error is returned by the load call and kept in the
//! model's status.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use greenbelt_core::{Signature, TensorSpec};
use greenbelt_runtime::{Backend, Device, LoadOptions, Model, Runtimes};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::batcher::{Batcher, BatchingConfig};
use crate::compute::Compute;
use crate::error::ServeError;
use crate::metrics::{Metrics, VersionMetrics};

/// Per-model `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The runtime: `auto` (the native engine when it runs every operator,
    /// else ONNX Runtime when its library is found, else tract),
    /// `native`, `onnxruntime` or `tract`.
    pub backend: Backend,
    /// File name inside each version directory.
    pub filename: String,
    /// Parallel model instances (ONNX Runtime sessions).
    pub instances: usize,
    /// Threads one inference may use inside the runtime (0 = runtime default).
    pub intra_op_threads: usize,
    /// `cpu` (default), `cuda` or `cuda:N`: a GPU needs ONNX Runtime's CUDA
    /// execution provider (Triton's `instance_group { kind: KIND_GPU }`).
    #[schemars(with = "String")]
    pub device: Device,
    /// Which versions are served: `{ latest = N }` (default N = 1), `"all"`,
    /// or `{ specific = [1, 3] }`.
    pub version_policy: VersionPolicy,
    /// Dynamic batching; off when absent.
    pub batching: Option<BatchingConfig>,
    /// Signature overrides, by input name: dims given here replace the graph's.
    pub inputs: Vec<TensorSpec>,
    /// Signature overrides, by output name.
    pub outputs: Vec<TensorSpec>,
    /// Read the input from a feature service when a request carries entity
    /// keys (`[features] service = "..."`).
    pub features: Option<crate::features::FeatureInputConfig>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            backend: Backend::Auto,
            filename: "model.onnx".into(),
            instances: 1,
            intra_op_threads: 1,
            device: Device::Cpu,
            version_policy: VersionPolicy::default(),
            batching: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            features: None,
        }
    }
}

/// Which versions of a model are served (Triton's version policy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The newest N versions.
    Latest(usize),
    /// Every version found.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve among those on disk (ascending).
    pub fn select(&self, on_disk: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => {
                let skip = on_disk.len().saturating_sub(*n);
                on_disk.iter().skip(skip).copied().collect()
            }
            VersionPolicy::All => on_disk.to_vec(),
            VersionPolicy::Specific(list) => on_disk
                .iter()
                .filter(|v| list.contains(v))
                .copied()
                .collect(),
        }
    }
}

impl ModelConfig {
    /// The model's `config.toml`, or Triton's `config.pbtxt` (see
    /// `crate::triton`; the settings it ignores are named in a warning),
    /// or the defaults when it has neither.
    pub fn read(model_dir: &Path) -> Result<ModelConfig, String> {
        let toml_path = model_dir.join("config.toml");
        let pbtxt = model_dir.join("config.pbtxt");
        let (config, path) = if pbtxt.is_file() {
            if toml_path.is_file() {
                return Err(format!(
                    "{} has both config.toml and config.pbtxt; keep one",
                    model_dir.display()
                ));
            }
            let text =
                std::fs::read_to_string(&pbtxt).map_err(|e| format!("{}: {e}", pbtxt.display()))?;
            let dir_name = model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (config, ignored) = crate::triton::model_config(&text, &dir_name)
                .map_err(|e| format!("{}: {e}", pbtxt.display()))?;
            if !ignored.is_empty() {
                tracing::warn!(
                    file = %pbtxt.display(),
                    ignored = ?ignored,
                    "Triton settings Greenbelt does not have are ignored"
                );
            }
            (config, pbtxt)
        } else {
            let config = match std::fs::read_to_string(&toml_path) {
                Ok(text) => toml::from_str::<ModelConfig>(&text)
                    .map_err(|e| format!("{}: {e}", toml_path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => ModelConfig::default(),
                Err(e) => return Err(format!("{}: {e}", toml_path.display())),
            };
            (config, toml_path)
        };
        if !(1..=greenbelt_runtime::MAX_INSTANCES).contains(&config.instances) {
            return Err(format!(
                "{}: instances = {} must be between 1 and {}",
                path.display(),
                config.instances,
                greenbelt_runtime::MAX_INSTANCES
            ));
        }
        if let VersionPolicy::Latest(0) = config.version_policy {
            return Err(format!(
                "{}: version_policy latest must be >= 1",
                path.display()
            ));
        }
        if let Some(b) = &config.batching {
            b.validate()
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if config.filename.contains('/') || config.filename.starts_with('.') {
            return Err(format!(
                "{}: filename \"{}\" must be a plain file name",
                path.display(),
                config.filename
            ));
        }
        Ok(config)
    }
}

/// One loaded model version, ready to serve.
pub struct ServedVersion {
    pub model_name: Arc<str>,
    pub version: u64,
    pub version_label: Arc<str>,
    pub runtime: Arc<dyn Model>,
    /// The graph's signature with config overrides applied.
    pub signature: Signature,
    pub batcher: Option<Batcher>,
    /// Its model instances and the batcher's concurrency, resized by
    /// in-process scaling (`instances.rs`).
    pub instances: Arc<crate::instances::InstancePool>,
    pub metrics: VersionMetrics,
    pub platform: &'static str,
    /// The feature service this version reads (from its config).
    pub features: Option<crate::features::FeatureInputConfig>,
    /// The payload schema seen on the wire (`/admin/schema/{model}`).
    pub schema: crate::schema::SchemaTracker,
    /// The live drift monitor, when the version has a reference profile
    /// (`<model file stem>.profile.json` beside the model file).
    pub drift: Option<Arc<crate::drift::DriftMonitor>>,
    /// Which output holds the prediction (for delayed labels).
    pub prediction: Option<crate::drift::labels::PredictionSpec>,
    /// Whether small calls run inline on the request's thread (measured).
    pub inline: crate::compute::InlineHint,
    stamp: FileStamp,
}

impl ServedVersion {
    /// Run one inference on zeros (dynamic dims = 1) so the first real
    /// request does not pay for lazy initialisation. Blocking.
    pub fn warm(&self) -> Result<std::time::Duration, String> {
        use greenbelt_core::{DataType, Tensor, TensorData};
        let started = Instant::now();
        let inputs = self
            .signature
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<i64> = spec
                    .shape
                    .iter()
                    .map(|d| if *d < 0 { 1 } else { *d })
                    .collect();
                let n = shape.iter().product::<i64>().max(0) as usize;
                let mut data = TensorData::with_capacity(spec.datatype, n);
                match (&mut data, spec.datatype) {
                    (TensorData::Bytes(v), DataType::Bytes) => v.resize(n, bytes::Bytes::new()),
                    (TensorData::Bool(v), _) => v.resize(n, false),
                    _ => {
                        let zeros = vec![0u8; n * spec.datatype.element_size().unwrap_or(1)];
                        data = greenbelt_core::raw::decode(&spec.name, spec.datatype, n, &zeros)
                            .map_err(|e| e.to_string())?;
                    }
                }
                Tensor::new(spec.name.clone(), shape, data).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        self.runtime
            .infer(&inputs)
            .map_err(|e| format!("warm-up inference failed: {e}"))?;
        Ok(started.elapsed())
    }
}

#[derive(Debug, Clone, PartialEq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// State of one model as the repository index reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    Ready,
    Unavailable,
}

pub struct ModelEntry {
    pub name: String,
    pub config: ModelConfig,
    /// Served versions, ascending.
    pub versions: BTreeMap<u64, Arc<ServedVersion>>,
    /// The last load error, if the last load failed in whole or part.
    pub last_error: Option<String>,
    /// The version unversioned requests go to; None = the newest. Set for
    /// models served from a registry alias.
    pub default_version: Option<u64>,
    /// A deployment's routing plan (stable/canary/preview/shadows); None
    /// for plain repository models.
    pub routing: Option<Arc<crate::routing::Routing>>,
}

/// Where one request goes.
pub struct Routed {
    pub served: Arc<ServedVersion>,
    pub track: crate::routing::Track,
    pub entry: Arc<ModelEntry>,
}

impl ModelEntry {
    pub fn state(&self) -> ModelState {
        if self.versions.is_empty() {
            ModelState::Unavailable
        } else {
            ModelState::Ready
        }
    }

    /// The version an unversioned request goes to.
    pub fn default(&self) -> Option<&Arc<ServedVersion>> {
        match self.default_version {
            Some(v) => self.versions.get(&v),
            None => self.versions.values().next_back(),
        }
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub state: ModelState,
    pub reason: String,
}

pub struct Repository {
    root: PathBuf,
    runtimes: Runtimes,
    metrics: Arc<Metrics>,
    compute: Compute,
    models: RwLock<HashMap<String, Arc<ModelEntry>>>,
    /// Loads and unloads run one at a time.
    load_lock: std::sync::Mutex<()>,
    /// The online feature store, when the server has one: a version whose
    /// `[features]` service does not fit its input is refused at load.
    features: Option<Arc<dyn crate::features::FeatureSource>>,
    /// Models an operator unloaded (readiness stops requiring them until
    /// they are loaded again).
    unloaded: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Rows of one request a drift window counts (`[drift] max_rows_per_request`).
    drift_rows: usize,
}

/// A model name must be one plain path component.
pub fn check_model_name(name: &str) -> Result<(), ServeError> {
    if greenbelt_core::is_valid_name(name) {
        Ok(())
    } else {
        Err(ServeError::InvalidInput(format!(
            "model name \"{}\" is not valid: use letters, digits, '_', '-' and '.', not starting with '.'",
            name.chars().take(200).collect::<String>()
        )))
    }
}

impl Repository {
    pub fn new(root: PathBuf, runtimes: Runtimes, metrics: Arc<Metrics>, compute: Compute) -> Self {
        Repository {
            root,
            runtimes,
            metrics,
            compute,
            models: RwLock::new(HashMap::new()),
            load_lock: std::sync::Mutex::new(()),
            features: None,
            unloaded: Default::default(),
            drift_rows: 1024,
        }
    }

    /// Rows of one request the drift monitors of versions loaded from now
    /// on count (`[drift] max_rows_per_request`).
    pub fn with_drift_rows(mut self, rows: usize) -> Self {
        self.drift_rows = rows.max(1);
        self
    }

    /// Check `[features]` of every version loaded from now on against `source`.
    pub fn with_features(
        mut self,
        source: Option<Arc<dyn crate::features::FeatureSource>>,
    ) -> Self {
        self.features = source;
        self
    }

    /// The feature source versions read from, if any.
    pub fn features(&self) -> Option<&Arc<dyn crate::features::FeatureSource>> {
        self.features.as_ref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// Model directories present on disk.
    pub fn on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| check_model_name(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.models.read().ok()?.get(name).cloned()
    }

    pub fn loaded(&self) -> Vec<Arc<ModelEntry>> {
        let mut v: Vec<Arc<ModelEntry>> = self
            .models
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Resolve the version that serves a request. `version` None or empty
    /// means the newest served version.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedVersion>, ServeError> {
        let entry = self
            .get(model)
            .ok_or_else(|| ServeError::ModelNotFound(model.to_string()))?;
        match version.filter(|v| !v.is_empty()) {
            None => entry
                .default()
                .cloned()
                .ok_or_else(|| ServeError::ModelNotReady {
                    model: model.to_string(),
                    reason: entry
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no version is loaded".into()),
                }),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|n| entry.versions.get(&n).cloned())
                .ok_or_else(|| ServeError::VersionNotFound {
                    model: model.to_string(),
                    version: v.chars().take(64).collect(),
                    ready: entry.versions.keys().map(u64::to_string).collect(),
                }),
        }
    }

    /// Load (or reload) a model from disk. Versions whose file did not change
    /// keep their loaded instance. On any failure, every version that was
    /// serving keeps serving and the error is returned. Blocking: call from
    /// a blocking thread.
    pub fn load(&self, name: &str) -> Result<Arc<ModelEntry>, ServeError> {
        check_model_name(name)?;
        if let Ok(mut u) = self.unloaded.lock() {
            u.remove(name);
        }
        let _guard = self
            .load_lock
            .lock()
            .map_err(|_| ServeError::Internal("load lock poisoned".into()))?;
        let previous = self.get(name);
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(ServeError::ModelNotFound(name.to_string()));
        }
        let outcome = self.load_versions(name, &dir, previous.as_deref());
        let (config, mut versions, errors) = match outcome {
            Ok(v) => v,
            Err(reason) => {
                // The model (or its config) cannot be read at all: keep what served.
                self.metrics.load_failed(name);
                self.record_failure(name, previous, &reason);
                return Err(ServeError::LoadFailed {
                    model: name.to_string(),
                    reason,
                });
            }
        };
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if error.is_some() {
            self.metrics.load_failed(name);
            // Nothing that served before is removed by a failed load.
            if let Some(prev) = &previous {
                for (v, served) in &prev.versions {
                    versions.entry(*v).or_insert_with(|| served.clone());
                }
            }
        }
        if let Some(prev) = &previous {
            for v in prev.versions.keys().filter(|v| !versions.contains_key(v)) {
                self.metrics.forget_version(name, &v.to_string());
            }
        }
        for v in versions.keys() {
            self.metrics.set_ready(name, &v.to_string(), true);
        }
        let entry = Arc::new(ModelEntry {
            name: name.to_string(),
            config,
            versions,
            last_error: error.clone(),
            default_version: None,
            routing: None,
        });
        self.insert(entry.clone());
        match error {
            None => Ok(entry),
            Some(reason) => Err(ServeError::LoadFailed {
                model: name.to_string(),
                reason,
            }),
        }
    }

    #[allow(clippy::type_complexity)]
    fn load_versions(
        &self,
        name: &str,
        dir: &Path,
        previous: Option<&ModelEntry>,
    ) -> Result<(ModelConfig, BTreeMap<u64, Arc<ServedVersion>>, Vec<String>), String> {
        let config = ModelConfig::read(dir)?;
        let mut on_disk: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
            .filter(|v| *v > 0)
            .collect();
        on_disk.sort_unstable();
        let wanted = config.version_policy.select(&on_disk);
        if wanted.is_empty() {
            return Err(format!(
                "no version directory matches the version policy {:?} under {} (found {on_disk:?}); expected {}/<version>/{}",
                config.version_policy,
                dir.display(),
                dir.display(),
                config.filename
            ));
        }
        let mut versions = BTreeMap::new();
        let mut errors = Vec::new();
        for v in wanted {
            let file = dir.join(v.to_string()).join(&config.filename);
            let stamp = FileStamp::of(&file);
            let reusable = previous
                .filter(|p| p.config == config)
                .and_then(|p| p.versions.get(&v))
                .filter(|s| stamp.as_ref() == Some(&s.stamp));
            if let Some(served) = reusable {
                versions.insert(v, served.clone());
                continue;
            }
            match self.load_version(name, v, &file, &config, stamp, None) {
                Ok(served) => {
                    versions.insert(v, Arc::new(served));
                }
                Err(e) => {
                    tracing::warn!(model = name, version = v, error = %e, "model version failed to load");
                    errors.push(format!("version {v}: {e}"));
                }
            }
        }
        Ok((config, versions, errors))
    }

    /// Load one version from `file` (used by sources other than the disk
    /// repository, e.g. a registry). Blocking.
    pub fn load_file(
        &self,
        name: &str,
        version: u64,
        file: &Path,
        config: &ModelConfig,
    ) -> Result<ServedVersion, String> {
        self.load_version(name, version, file, config, FileStamp::of(file), None)
    }

    /// [`Repository::load_file`] for a drill: the version is served through
    /// the fault wrapper (see `fault.rs`). Blocking.
    pub fn load_file_with_fault(
        &self,
        name: &str,
        version: u64,
        file: &Path,
        config: &ModelConfig,
        fault: crate::fault::Fault,
    ) -> Result<ServedVersion, String> {
        self.load_version(
            name,
            version,
            file,
            config,
            FileStamp::of(file),
            Some(fault),
        )
    }

    /// Replace the entry of `name` atomically: requests already holding a
    /// version finish on it; new ones see the new set.
    pub fn install(
        &self,
        name: &str,
        config: ModelConfig,
        versions: BTreeMap<u64, Arc<ServedVersion>>,
        default_version: Option<u64>,
    ) {
        self.install_entry(name, config, versions, default_version, None);
    }

    /// Install a deployment: its versions and routing plan, atomically. The
    /// stable version is the default for clients that do not route.
    pub fn install_deployment(
        &self,
        name: &str,
        config: ModelConfig,
        versions: BTreeMap<u64, Arc<ServedVersion>>,
        routing: crate::routing::Routing,
    ) {
        let stable = Some(routing.stable);
        self.install_entry(name, config, versions, stable, Some(Arc::new(routing)));
    }

    fn install_entry(
        &self,
        name: &str,
        config: ModelConfig,
        versions: BTreeMap<u64, Arc<ServedVersion>>,
        default_version: Option<u64>,
        routing: Option<Arc<crate::routing::Routing>>,
    ) {
        let previous = self.get(name);
        if let Some(prev) = &previous {
            for v in prev.versions.keys().filter(|v| !versions.contains_key(v)) {
                self.metrics.forget_version(name, &v.to_string());
            }
        }
        for v in versions.keys() {
            self.metrics.set_ready(name, &v.to_string(), true);
        }
        self.insert(Arc::new(ModelEntry {
            name: name.to_string(),
            config,
            versions,
            last_error: None,
            default_version,
            routing,
        }));
    }

    /// Route one request: a version named by the client is pinned;
    /// otherwise a deployment's plan chooses (track header, sticky key,
    /// weights), and a plain model answers with its default version.
    pub fn route(
        &self,
        model: &str,
        version: Option<&str>,
        headers: &axum::http::HeaderMap,
    ) -> Result<Routed, ServeError> {
        use crate::routing::{TRACK_HEADER, Track};
        let entry = self
            .get(model)
            .ok_or_else(|| ServeError::ModelNotFound(model.to_string()))?;
        if version.is_some_and(|v| !v.is_empty()) {
            let served = self.resolve(model, version)?;
            return Ok(Routed {
                served,
                track: Track::Pinned,
                entry,
            });
        }
        let Some(routing) = &entry.routing else {
            let served = self.resolve(model, None)?;
            return Ok(Routed {
                served,
                track: Track::Stable,
                entry,
            });
        };
        let track = headers.get(TRACK_HEADER).and_then(|v| v.to_str().ok());
        let key = routing
            .sticky_header
            .as_deref()
            .and_then(|h| headers.get(h))
            .map(|v| v.as_bytes());
        let (v, track) = routing.choose(track, key)?;
        let served = entry
            .versions
            .get(&v)
            .cloned()
            .ok_or_else(|| ServeError::ModelNotReady {
                model: model.to_string(),
                reason: format!("version {v} of the routing plan is not loaded"),
            })?;
        Ok(Routed {
            served,
            track,
            entry,
        })
    }

    /// Record a failed load from another source without touching what serves.
    pub fn record_error(&self, name: &str, reason: &str) {
        self.metrics.load_failed(name);
        let previous = self.get(name);
        self.record_failure(name, previous, reason);
    }

    fn load_version(
        &self,
        name: &str,
        version: u64,
        file: &Path,
        config: &ModelConfig,
        stamp: Option<FileStamp>,
        fault: Option<crate::fault::Fault>,
    ) -> Result<ServedVersion, String> {
        let started = Instant::now();
        let opts = LoadOptions {
            backend: config.backend,
            intra_op_threads: config.intra_op_threads,
            instances: config.instances,
            device: config.device,
        };
        let mut runtime = self.runtimes.load(file, &opts).map_err(|e| e.to_string())?;
        if let Some(f) = fault {
            runtime = crate::fault::FaultyModel::wrap(runtime, f);
        }
        let signature = apply_overrides(runtime.signature(), config)?;
        if let Some(f) = &config.features {
            crate::features::check_config(f, &signature.inputs, self.features.as_deref())?;
        }
        let label = version.to_string();
        let metrics = self.metrics.version(name, &label);
        let instances = Arc::new(crate::instances::InstancePool::new(
            runtime.clone(),
            config.instances,
            config.batching.is_some(),
        ));
        let batcher = match &config.batching {
            Some(b) => {
                if !signature.batchable() {
                    return Err(format!(
                        "batching needs every input and output to have a dynamic first dimension (-1); signature is {:?}",
                        signature
                    ));
                }
                Some(Batcher::spawn(
                    b.clone(),
                    runtime.clone(),
                    instances.width().clone(),
                    self.compute.clone(),
                    metrics.clone(),
                ))
            }
            None => None,
        };
        let profile = read_profile(file)?;
        let drift = profile
            .as_ref()
            .map(|p| crate::drift::DriftMonitor::new(p, &signature, self.drift_rows, 0))
            .transpose()
            .map_err(|e| format!("{}: {e}", profile_path(file).display()))?
            .map(Arc::new);
        let prediction = crate::drift::labels::PredictionSpec::of(&signature, profile.as_ref());
        let took = started.elapsed();
        self.metrics.set_load_duration(name, &label, took);
        // The cost of holding it: each instance keeps its own copy of the
        // weights, the store keeps one artifact (docs/cost.md).
        let artifact = std::fs::metadata(file).map_or(0, |m| m.len());
        metrics.cost().on_gpu(config.device.is_gpu());
        metrics.cost().hold(
            artifact.saturating_mul(config.instances.max(1) as u64),
            artifact,
            tokio::time::Instant::now(),
        );
        tracing::info!(
            model = name,
            version,
            backend = runtime.backend().as_str(),
            load_ms = took.as_secs_f64() * 1000.0,
            batching = batcher.is_some(),
            "model version loaded"
        );
        Ok(ServedVersion {
            model_name: Arc::from(name),
            version,
            version_label: Arc::from(label.as_str()),
            platform: runtime.backend().platform(),
            runtime,
            signature,
            batcher,
            instances,
            schema: crate::schema::SchemaTracker::new(
                Arc::from(name),
                Arc::from(label.as_str()),
                metrics.schema_counter(),
            ),
            metrics,
            features: config.features.clone(),
            drift,
            prediction,
            inline: crate::compute::InlineHint::default(),
            stamp: stamp.unwrap_or(FileStamp {
                len: 0,
                modified: None,
            }),
        })
    }

    fn record_failure(&self, name: &str, previous: Option<Arc<ModelEntry>>, reason: &str) {
        let entry = match previous {
            Some(prev) => ModelEntry {
                name: name.to_string(),
                config: prev.config.clone(),
                versions: prev.versions.clone(),
                last_error: Some(reason.to_string()),
                default_version: prev.default_version,
                routing: prev.routing.clone(),
            },
            None => ModelEntry {
                name: name.to_string(),
                config: ModelConfig::default(),
                versions: BTreeMap::new(),
                last_error: Some(reason.to_string()),
                default_version: None,
                routing: None,
            },
        };
        self.insert(Arc::new(entry));
    }

    fn insert(&self, entry: Arc<ModelEntry>) {
        if let Ok(mut m) = self.models.write() {
            m.insert(entry.name.clone(), entry);
        }
    }

    /// Stop serving a model. In-flight requests holding a version finish.
    pub fn unload(&self, name: &str) -> Result<(), ServeError> {
        check_model_name(name)?;
        let _guard = self
            .load_lock
            .lock()
            .map_err(|_| ServeError::Internal("load lock poisoned".into()))?;
        let removed = self
            .models
            .write()
            .map_err(|_| ServeError::Internal("repository lock poisoned".into()))?
            .remove(name);
        match removed {
            Some(entry) => {
                for v in entry.versions.keys() {
                    self.metrics.forget_version(name, &v.to_string());
                }
                if let Ok(mut u) = self.unloaded.lock() {
                    u.insert(name.to_string());
                }
                tracing::info!(model = name, "model unloaded");
                Ok(())
            }
            None => Err(ServeError::ModelNotFound(name.to_string())),
        }
    }

    /// Whether an operator unloaded `name` (and nobody loaded it since).
    pub fn unloaded_on_request(&self, name: &str) -> bool {
        self.unloaded.lock().is_ok_and(|u| u.contains(name))
    }

    /// Every model on disk or loaded, with its state (repository extension).
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut names = self.on_disk();
        for e in self.loaded() {
            if !names.contains(&e.name) {
                names.push(e.name.clone());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match self.get(&name) {
                Some(entry) if !entry.versions.is_empty() => {
                    // A failed reload keeps these versions serving; say why it failed.
                    let reason = entry
                        .last_error
                        .as_ref()
                        .map(|e| format!("serving; last load failed: {e}"))
                        .unwrap_or_default();
                    for v in entry.versions.keys() {
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: Some(v.to_string()),
                            state: ModelState::Ready,
                            reason: reason.clone(),
                        });
                    }
                }
                Some(entry) => out.push(IndexEntry {
                    name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason: entry.last_error.clone().unwrap_or_default(),
                }),
                None => out.push(IndexEntry {
                    name,
                    version: None,
                    state: ModelState::Unavailable,
                    reason: "not loaded".into(),
                }),
            }
        }
        if ready_only {
            out.retain(|e| e.state == ModelState::Ready);
        }
        out
    }
}

/// Apply `config.inputs` / `config.outputs` to the graph's signature. An
/// override may name dims the graph leaves dynamic, not change fixed ones or
/// the datatype.
fn apply_overrides(graph: &Signature, config: &ModelConfig) -> Result<Signature, String> {
    let mut sig = graph.clone();
    for (kind, overrides, specs) in [
        ("input", &config.inputs, &mut sig.inputs),
        ("output", &config.outputs, &mut sig.outputs),
    ] {
        for o in overrides {
            let Some(spec) = specs.iter_mut().find(|s| s.name == o.name) else {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(format!(
                    "config {kind} \"{}\" is not in the model; its {kind}s are {names:?}",
                    o.name
                ));
            };
            if spec.datatype != o.datatype {
                return Err(format!(
                    "config {kind} \"{}\": datatype {} differs from the model's {}",
                    o.name, o.datatype, spec.datatype
                ));
            }
            let compatible = spec.shape.len() == o.shape.len()
                && spec
                    .shape
                    .iter()
                    .zip(&o.shape)
                    .all(|(g, c)| *g < 0 || g == c);
            if !compatible {
                return Err(format!(
                    "config {kind} \"{}\": shape {:?} does not fit the model's {:?}",
                    o.name, o.shape, spec.shape
                ));
            }
            spec.shape = o.shape.clone();
        }
    }
    Ok(sig)
}

/// Where a model file's reference profile lives: `model.onnx` →
/// `model.profile.json`, `<sha>.onnx` → `<sha>.profile.json`.
pub fn profile_path(model_file: &Path) -> PathBuf {
    model_file.with_extension("profile.json")
}

/// The model file's reference profile, if it has one.
fn read_profile(model_file: &Path) -> Result<Option<greenbelt_drift::model::ModelProfile>, String> {
    let path = profile_path(model_file);
    match std::fs::read_to_string(&path) {
        Ok(text) => greenbelt_drift::model::ModelProfile::from_json(&text)
            .map(Some)
            .map_err(|e| {
                format!(
                    "{}: {e}; fix the file or remove it to serve without drift monitoring",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenbelt_core::DataType;

    #[test]
    fn version_policy_selects() {
        let disk = [1, 2, 5, 7];
        assert_eq!(VersionPolicy::Latest(1).select(&disk), vec![7]);
        assert_eq!(VersionPolicy::Latest(2).select(&disk), vec![5, 7]);
        assert_eq!(VersionPolicy::Latest(9).select(&disk), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::All.select(&disk), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::Specific(vec![2, 3]).select(&disk), vec![2]);
    }

    #[test]
    fn model_config_parses_policies_and_rejects_typos() {
        let c: ModelConfig = toml::from_str("version_policy = \"all\"").unwrap();
        assert_eq!(c.version_policy, VersionPolicy::All);
        let c: ModelConfig = toml::from_str("version_policy = { latest = 2 }").unwrap();
        assert_eq!(c.version_policy, VersionPolicy::Latest(2));
        let c: ModelConfig = toml::from_str("version_policy = { specific = [1, 3] }").unwrap();
        assert_eq!(c.version_policy, VersionPolicy::Specific(vec![1, 3]));
        let c: ModelConfig =
            toml::from_str("[batching]\nmax_batch_size = 8\nmax_queue_delay_us = 100\n").unwrap();
        assert_eq!(c.batching.map(|b| b.max_batch_size), Some(8));
        assert!(toml::from_str::<ModelConfig>("backend = \"tensorflow\"").is_err());
        assert!(toml::from_str::<ModelConfig>("instance = 2").is_err());
    }

    #[test]
    fn instances_outside_the_pool_bounds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (text, ok) in [
            ("instances = 64", true),
            ("instances = 0", false),
            ("instances = 65", false),
        ] {
            std::fs::write(dir.path().join("config.toml"), text).unwrap();
            match ModelConfig::read(dir.path()) {
                Ok(c) => assert!(ok, "{text} accepted: {c:?}"),
                Err(e) => {
                    assert!(!ok, "{text}: {e}");
                    assert!(e.contains("must be between 1 and 64"), "{e}");
                }
            }
        }
    }

    #[test]
    fn model_names_are_single_components() {
        for bad in ["", "..", "../etc", "a/b", ".hidden", "a b"] {
            assert!(check_model_name(bad).is_err(), "{bad}");
        }
        for good in ["fraud", "fraud-v2", "model_1.onnx"] {
            assert!(check_model_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn overrides_fill_dynamic_dims_only() {
        let graph = Signature {
            inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, -1])],
            outputs: vec![TensorSpec::new("y", DataType::Fp32, vec![-1])],
        };
        let mut c = ModelConfig {
            inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 20])],
            ..Default::default()
        };
        assert_eq!(
            apply_overrides(&graph, &c).unwrap().inputs[0].shape,
            vec![-1, 20]
        );
        c.inputs = vec![TensorSpec::new("x", DataType::Fp64, vec![-1, 20])];
        assert!(
            apply_overrides(&graph, &c)
                .unwrap_err()
                .contains("datatype")
        );
        c.inputs = vec![TensorSpec::new("z", DataType::Fp32, vec![-1, 20])];
        assert!(
            apply_overrides(&graph, &c)
                .unwrap_err()
                .contains("not in the model")
        );
    }
}
