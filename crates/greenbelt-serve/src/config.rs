//! `greenbelt.toml`: parsed with serde (unknown keys are errors), then
//! overridden by `GREENBELT__SECTION__KEY` environment variables. Every
//! setting has a default that works on one machine.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The REST and gRPC listeners, their limits, and the compute pool.
    pub server: ServerConfig,
    /// The model repository on disk (`<path>/<model>/<version>/model.onnx`,
    /// with an optional per-model `config.toml`).
    pub repository: RepositoryConfig,
    /// The model runtimes (where ONNX Runtime's library is).
    pub runtime: RuntimeConfig,
    /// Request logs and the sampled payload log.
    pub telemetry: TelemetryConfig,
    /// The model registry: its database, artifact store and cache.
    pub registry: RegistryConfig,
    /// Deployments: models served from a registry alias, with release
    /// settings (`[[deployments]]`; `[[routes]]` is accepted too).
    #[serde(alias = "routes")]
    pub deployments: Vec<crate::deployment::DeploymentConfig>,
    /// The feature store `serve` mounts (`/features/*`, entity-key requests).
    pub features: FeaturesConfig,
    /// Tokens, roles, model control and exposure (`greenbelt-auth`).
    pub auth: greenbelt_auth::AuthConfig,
    /// Bounds on decoding one request (`[limits]`, see `limits.rs`).
    pub limits: crate::limits::Limits,
    /// Service-level objectives (`[[slo]]`); `greenbelt slo rules` turns
    /// them into Prometheus rules (see `slo.rs`).
    pub slo: Vec<crate::slo::SloConfig>,
    /// The in-process evaluation of the `[[slo]]`s (`/admin/alerts`,
    /// webhook).
    pub alerts: crate::alerts::AlertsConfig,
    /// OpenTelemetry traces over OTLP (`[tracing]`, see `traces.rs`).
    pub tracing: crate::traces::TracingConfig,
    /// The autoscaler's evaluation (`[autoscale]`; per-deployment policy in
    /// `[deployments.autoscale]`, see `autoscale.rs`).
    pub autoscale: crate::autoscale::AutoscaleConfig,
    /// The live drift monitor and delayed labels (`[drift]`, see `drift/`).
    pub drift: crate::drift::DriftConfig,
    /// Cost accounting: the price table, egress class, provisioning
    /// (`[cost]`, see `cost/`).
    pub cost: crate::cost::CostConfig,
    /// Budgets per deployment or model (`[[budget]]`), with burn-rate
    /// alerts (`cost/budget.rs`).
    pub budget: Vec<crate::cost::budget::BudgetConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// The definitions file (`features.toml`). Unset: `$GREENBELT_FEATURES`,
    /// else `./features.toml` when it exists; none: no feature store.
    pub definitions: Option<PathBuf>,
    /// Run the synthetic freshness canary inside `serve` this often
    /// (humantime, e.g. "1m"); unset: off.
    pub canary_interval: Option<String>,
    /// How often `serve` refreshes the freshness gauges on /metrics
    /// (humantime; default "30s").
    pub freshness_interval: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `sqlite://path` or `postgres://...`.
    #[schemars(
        skip_serializing_if = "Option::is_none",
        extend("default" = RegistryConfig::DEFAULT_URL)
    )]
    pub url: Option<String>,
    /// Artifact store: a directory, `file:///abs/dir`, or `s3://bucket/prefix`.
    pub artifacts: String,
    /// How often a server checks its routes' aliases.
    /// (Old key `poll_interval_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "poll_interval",
        alias = "poll_interval_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub poll_interval_ms: u64,
    /// Actor recorded for changes made without a token (CLI, pipeline).
    pub actor: String,
    /// Deprecated: tokens belong in `[auth] tokens_file` or
    /// `GREENBELT_TOKENS`. Each entry here (name = token) is an admin token.
    pub admin_tokens: std::collections::BTreeMap<String, String>,
    /// Where a server keeps the artifacts of the versions it serves and,
    /// per deployment, the version it last served: what it starts from
    /// when the registry database is down at start-up.
    pub cache_dir: String,
    /// How long `serve` waits for the registry database at start-up before
    /// it serves its deployments from `cache_dir` (and keeps retrying).
    /// (Old key `startup_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "startup_timeout",
        alias = "startup_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub startup_timeout_ms: u64,
    /// The circuit breaker around the deployment controller's registry
    /// database calls (resilience4j's settings; docs/resilience.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = greenbelt_core::breaker::BreakerSpec::written(
        &RegistryConfig::default_breaker()
    )))]
    pub breaker: Option<greenbelt_core::breaker::BreakerSpec>,
    /// The circuit breaker around artifact store reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = greenbelt_core::breaker::BreakerSpec::written(
        &RegistryConfig::default_artifacts_breaker()
    )))]
    pub artifacts_breaker: Option<greenbelt_core::breaker::BreakerSpec>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: None,
            artifacts: ".greenbelt/artifacts".into(),
            poll_interval_ms: 200,
            actor: "greenbelt".into(),
            admin_tokens: Default::default(),
            cache_dir: ".greenbelt/cache".into(),
            startup_timeout_ms: 5_000,
            breaker: None,
            artifacts_breaker: None,
        }
    }
}

impl RegistryConfig {
    pub const DEFAULT_URL: &'static str = "sqlite://.greenbelt/registry.db";

    /// The registry database breaker: a tick is one call, bounded by the
    /// controller's registry timeout (5 s), so 2 s is slow; three failed
    /// ticks in a row open it for 10 s.
    pub fn default_breaker() -> greenbelt_core::breaker::BreakerConfig {
        greenbelt_core::breaker::BreakerConfig {
            slow_call_duration: std::time::Duration::from_secs(2),
            sliding_window_size: 10,
            minimum_number_of_calls: 3,
            wait_duration_in_open: std::time::Duration::from_secs(10),
            permitted_calls_in_half_open: 1,
            ..Default::default()
        }
    }

    /// The artifact store breaker: a read of a model file may take a while
    /// (30 s is slow); two failures of three open it for 30 s.
    pub fn default_artifacts_breaker() -> greenbelt_core::breaker::BreakerConfig {
        greenbelt_core::breaker::BreakerConfig {
            slow_call_duration: std::time::Duration::from_secs(30),
            sliding_window_size: 10,
            minimum_number_of_calls: 3,
            wait_duration_in_open: std::time::Duration::from_secs(30),
            permitted_calls_in_half_open: 1,
            ..Default::default()
        }
    }

    /// `[registry.breaker]` over [`RegistryConfig::default_breaker`], validated.
    pub fn breaker_config(&self) -> Result<greenbelt_core::breaker::BreakerConfig, String> {
        Self::resolve("[registry.breaker]", &self.breaker, Self::default_breaker())
    }

    /// `[registry.artifacts_breaker]` over its defaults, validated.
    pub fn artifacts_breaker_config(
        &self,
    ) -> Result<greenbelt_core::breaker::BreakerConfig, String> {
        Self::resolve(
            "[registry.artifacts_breaker]",
            &self.artifacts_breaker,
            Self::default_artifacts_breaker(),
        )
    }

    fn resolve(
        what: &str,
        spec: &Option<greenbelt_core::breaker::BreakerSpec>,
        defaults: greenbelt_core::breaker::BreakerConfig,
    ) -> Result<greenbelt_core::breaker::BreakerConfig, String> {
        match spec {
            None => Ok(defaults),
            Some(s) => s.to_config(what, defaults, |field, text| {
                crate::deployment::duration(&format!("{what} {field}"), text)
            }),
        }
    }

    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(Self::DEFAULT_URL)
    }
}

/// The old name of a deployment entry (`[[routes]]`), kept for configs
/// written before deployments had release settings.
pub type RouteConfig = crate::deployment::DeploymentConfig;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// REST listen address.
    pub http_addr: String,
    /// gRPC listen address; empty disables gRPC.
    pub grpc_addr: String,
    /// Largest accepted request body (REST) or message (gRPC), in bytes.
    pub max_request_bytes: usize,
    /// Per-request timeout, end to end.
    /// (Old key `request_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "request_timeout",
        alias = "request_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub request_timeout_ms: u64,
    /// In-flight inference requests beyond which new ones are shed with 503.
    pub max_inflight: usize,
    /// Request bodies in flight, in bytes, beyond which new ones are shed
    /// with 503 before they are decoded (bounds memory under a burst of
    /// large requests).
    pub max_inflight_bytes: usize,
    /// A client must send a request's headers within this long
    /// once the server waits for them (REST, HTTP/1); else
    /// the connection is closed. This also closes keep-alive connections
    /// that stay idle this long between requests.
    /// (Old key `header_read_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "header_read_timeout",
        alias = "header_read_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub header_read_timeout_ms: u64,
    /// Connections with no request for this long are closed (REST keep-alive
    /// and gRPC).
    /// (Old key `idle_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "idle_timeout",
        alias = "idle_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub idle_timeout_ms: u64,
    /// Open connections per listener beyond which new ones wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (gRPC and REST over h2).
    pub max_concurrent_streams: u32,
    /// How long shutdown waits for in-flight requests.
    /// (Old key `drain_timeout_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "drain_timeout",
        alias = "drain_timeout_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub drain_timeout_ms: u64,
    /// Threads that run inference (0 = one per CPU).
    pub compute_threads: usize,
    /// Mirrored requests waiting for their shadow; beyond it copies are
    /// dropped (and counted), never waited for.
    pub shadow_queue: usize,
    /// Shadow requests running at once (0 = compute_threads).
    pub shadow_concurrency: usize,
    /// Serve registry versions tagged `fault` (drills only): see `fault.rs`.
    pub allow_fault_injection: bool,
    /// The adaptive per-model concurrency limit (`[server.concurrency]`,
    /// see `stages/limit.rs`); `max_inflight` stays the hard cap.
    pub concurrency: crate::stages::limit::ConcurrencyConfig,
    /// Longest a request may wait for compute (batcher queue or compute
    /// pool); past it the request is shed with 503 before
    /// it costs compute. Never more than what is left of the request timeout.
    /// (Old key `queue_budget_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "queue_budget",
        alias = "queue_budget_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub queue_budget_ms: u64,
    /// After SIGTERM, keep serving (with readiness false) this long before
    /// draining, so load balancers stop sending first ("0s" = drain at once).
    /// (Old key `shutdown_delay_ms`, an integer in milliseconds, is still accepted.)
    #[serde(
        rename = "shutdown_delay",
        alias = "shutdown_delay_ms",
        with = "greenbelt_core::duration::ms"
    )]
    #[schemars(with = "String")]
    pub shutdown_delay_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: "127.0.0.1:8000".into(),
            grpc_addr: "127.0.0.1:8001".into(),
            max_request_bytes: 64 * 1024 * 1024,
            request_timeout_ms: 10_000,
            max_inflight: 4096,
            max_inflight_bytes: 512 * 1024 * 1024,
            header_read_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            max_connections: 10_000,
            max_concurrent_streams: 256,
            drain_timeout_ms: 30_000,
            compute_threads: 0,
            shadow_queue: 1024,
            shadow_concurrency: 0,
            allow_fault_injection: false,
            concurrency: Default::default(),
            queue_budget_ms: 5_000,
            shutdown_delay_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// The model repository: `<path>/<model>/<version>/model.onnx`.
    pub path: PathBuf,
    /// Load every model found at start-up (else only on explicit load calls).
    pub load_on_startup: bool,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            path: PathBuf::from("models"),
            load_on_startup: true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path to `libonnxruntime.so`; unset = search ORT_DYLIB_PATH, beside the
    /// binary, `.greenbelt/onnxruntime`, then a Python onnxruntime install.
    pub onnxruntime_library: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// One JSON log line per inference request (formatted and written off
    /// the request path; see `crate::reqlog`).
    pub log_requests: bool,
    /// Share of successful requests that get a log line, 0 < x <= 1 (failed
    /// requests are always logged). Chosen by trace id, so a trace that is
    /// continued across services is logged by all of them or none.
    pub log_sample: f64,
    /// Lines waiting for the log writer at most; past it lines are dropped
    /// and counted in `greenbelt_request_log_dropped_total`.
    pub log_queue: usize,
    /// Write the request log to this file (appended, JSON lines) instead
    /// of the process's log; unset: beside the other log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<std::path::PathBuf>,
    /// The sampled payload log (`[telemetry.payload_log]`, see `crate::payloadlog`).
    pub payload_log: crate::payloadlog::PayloadLogConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_requests: true,
            log_sample: 1.0,
            log_queue: 65_536,
            log_file: None,
            payload_log: Default::default(),
        }
    }
}

/// A background task's interval setting: a humantime duration of at least
/// 10 ms; errors name `key` and give `example`.
pub fn interval(key: &str, text: &str, example: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{key} \"{text}\": {e} (e.g. \"{example}\")"))?;
    if d < std::time::Duration::from_millis(10) {
        return Err(format!("{key} must be at least 10ms"));
    }
    Ok(d)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Read `path` (if given and present; a missing explicit file is an
    /// error), apply environment overrides, validate.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let shown = path.unwrap_or(Path::new("<defaults>"));
        Config::from_toml_str(&text, shown, std::env::vars())
    }

    /// Parse TOML text, then apply `GREENBELT__SECTION__KEY=value` overrides
    /// from `env`.
    pub fn from_toml_str(
        text: &str,
        shown: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Parse the file alone first, so errors carry its line and column.
        toml::from_str::<Config>(text).map_err(|e| ConfigError::Parse {
            path: shown.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: shown.to_path_buf(),
                    message: e.to_string(),
                })?;
        let mut applied = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("GREENBELT__") else {
                continue;
            };
            let mut parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            // `GREENBELT__SECTION__KEY__FILE=/run/secrets/x`: the value is
            // that file's text (a secret kept out of the environment).
            let from_file = parts.len() >= 3 && parts.last().is_some_and(|p| p == "file");
            if from_file {
                parts.pop();
            }
            if parts.len() < 2 || parts.iter().any(String::is_empty) {
                return Err(ConfigError::Env {
                    var,
                    message: "expected GREENBELT__SECTION__KEY (deeper: GREENBELT__SERVER__CONCURRENCY__ALGORITHM, GREENBELT__DEPLOYMENTS__<NAME>__KEY), or the same with __FILE naming a file that holds the value".into(),
                });
            }
            let value = if from_file {
                match std::fs::read_to_string(&value) {
                    Ok(text) => {
                        toml::Value::String(text.trim_end_matches(['\n', '\r']).to_string())
                    }
                    Err(e) => {
                        return Err(ConfigError::Env {
                            var,
                            message: format!("cannot read {value}: {e}"),
                        });
                    }
                }
            } else {
                env_value(&value)
            };
            if let Err(message) = set_path(&mut table, &parts, value) {
                return Err(ConfigError::Env { var, message });
            }
            applied.push(var);
        }
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: shown.to_path_buf(),
                    // The file alone parsed: the environment broke it.
                    message: format!(
                        "with the environment's {}: {}",
                        applied.join(", "),
                        e.to_string().trim_end()
                    ),
                })?;
        for d in &mut config.deployments {
            d.resolve_model_uri().map_err(ConfigError::Invalid)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.max_request_bytes == 0 {
            return Err(ConfigError::Invalid(
                "[server] max_request_bytes must be > 0".into(),
            ));
        }
        if s.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "[server] request_timeout must be more than 0s".into(),
            ));
        }
        if s.max_inflight == 0 {
            return Err(ConfigError::Invalid(
                "[server] max_inflight must be > 0".into(),
            ));
        }
        if s.queue_budget_ms == 0 {
            return Err(ConfigError::Invalid(
                "[server] queue_budget must be more than 0s (the request timeout bounds it too)"
                    .into(),
            ));
        }
        s.concurrency.validate().map_err(ConfigError::Invalid)?;
        for (i, slo) in self.slo.iter().enumerate() {
            slo.validate(i).map_err(ConfigError::Invalid)?;
            if self.slo[..i].iter().any(|o| o.name() == slo.name()) {
                return Err(ConfigError::Invalid(format!(
                    "[[slo]] #{}: the name \"{}\" is used twice; give one of them a `name`",
                    i + 1,
                    slo.name()
                )));
            }
        }
        self.alerts.validate().map_err(ConfigError::Invalid)?;
        self.cost.validate().map_err(ConfigError::Invalid)?;
        for (i, b) in self.budget.iter().enumerate() {
            b.validate(i).map_err(ConfigError::Invalid)?;
            if self.budget[..i].iter().any(|o| o.name() == b.name()) {
                return Err(ConfigError::Invalid(format!(
                    "[[budget]] #{}: the name \"{}\" is used twice; give one of them a `name`",
                    i + 1,
                    b.name()
                )));
            }
        }
        let t = &self.telemetry;
        if !(t.log_sample > 0.0 && t.log_sample <= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "[telemetry] log_sample must be in (0, 1], got {}; turn the log off with log_requests = false",
                t.log_sample
            )));
        }
        if t.log_queue == 0 {
            return Err(ConfigError::Invalid(
                "[telemetry] log_queue must be > 0".into(),
            ));
        }
        self.tracing.validate().map_err(ConfigError::Invalid)?;
        self.autoscale.validate().map_err(ConfigError::Invalid)?;
        self.drift.settings().map_err(ConfigError::Invalid)?;
        t.payload_log.validate().map_err(ConfigError::Invalid)?;
        if self.registry.poll_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "[registry] poll_interval must be more than 0s".into(),
            ));
        }
        if self.registry.startup_timeout_ms == 0 || self.registry.startup_timeout_ms > 600_000 {
            return Err(ConfigError::Invalid(format!(
                "[registry] startup_timeout = \"{}\": must be between 1ms and 10m",
                greenbelt_core::duration::text(std::time::Duration::from_millis(
                    self.registry.startup_timeout_ms
                ))
            )));
        }
        if self.registry.cache_dir.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "[registry] cache_dir must not be empty (default \".greenbelt/cache\")".into(),
            ));
        }
        self.registry
            .breaker_config()
            .map_err(ConfigError::Invalid)?;
        self.registry
            .artifacts_breaker_config()
            .map_err(ConfigError::Invalid)?;
        for (i, r) in self.deployments.iter().enumerate() {
            crate::repository::check_model_name(&r.name)
                .map_err(|e| ConfigError::Invalid(format!("[[deployments]] name: {e}")))?;
            if self.deployments[..i].iter().any(|o| o.name == r.name) {
                return Err(ConfigError::Invalid(format!(
                    "[[deployments]] name \"{}\" is declared twice",
                    r.name
                )));
            }
            r.validate().map_err(ConfigError::Invalid)?;
        }
        for (name, value) in [
            ("max_inflight", s.max_inflight as u64),
            ("max_inflight_bytes", s.max_inflight_bytes as u64),
            ("header_read_timeout", s.header_read_timeout_ms),
            ("idle_timeout", s.idle_timeout_ms),
            ("max_connections", s.max_connections as u64),
            (
                "max_concurrent_streams",
                u64::from(s.max_concurrent_streams),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("[server] {name} must be > 0")));
            }
        }
        if s.idle_timeout_ms < s.request_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "[server] idle_timeout ({}) is shorter than request_timeout ({}): a slow answer would be cut as idle; raise idle_timeout",
                greenbelt_core::duration::text(std::time::Duration::from_millis(s.idle_timeout_ms)),
                greenbelt_core::duration::text(std::time::Duration::from_millis(
                    s.request_timeout_ms
                ))
            )));
        }
        if s.max_inflight_bytes < s.max_request_bytes {
            return Err(ConfigError::Invalid(format!(
                "[server] max_inflight_bytes ({}) is smaller than max_request_bytes ({}): no request that big could ever be admitted; raise max_inflight_bytes",
                s.max_inflight_bytes, s.max_request_bytes
            )));
        }
        for (name, addr) in [("http_addr", &s.http_addr), ("grpc_addr", &s.grpc_addr)] {
            if !(addr.is_empty() && name == "grpc_addr")
                && addr.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(ConfigError::Invalid(format!(
                    "[server] {name} = \"{addr}\" is not an address like 127.0.0.1:8000"
                )));
            }
        }
        Ok(())
    }

    pub fn compute_threads(&self) -> usize {
        match self.server.compute_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Environment values are typed the way TOML would read them when they parse
/// as a TOML value (numbers, booleans), else kept as strings.
/// The arrays of tables at the top of greenbelt.toml: an override can
/// change one of their elements, never add one.
const TOP_ARRAYS: [&str; 4] = ["deployments", "routes", "slo", "budget"];

/// Set the key at `path` (lower-case segments of an environment variable)
/// in `table`. Segments walk tables by key and arrays of tables by element:
/// a 0-based index, or the element's `name` (case-insensitive, `_` for
/// `-`). Missing tables are created; missing elements are errors. Setting
/// a duration key removes its other spellings (`request_timeout_ms` for
/// `request_timeout`), so the file and the environment do not collide.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((key, walk)) = path.split_last() else {
        return Err("no key".into());
    };
    let mut cur = table;
    let mut at = String::new();
    let mut segs = walk.iter().peekable();
    while let Some(seg) = segs.next() {
        let mut name = seg.as_str();
        if name == "deployments"
            && at.is_empty()
            && !cur.contains_key(name)
            && cur.contains_key("routes")
        {
            name = "routes";
        }
        if at.is_empty() && TOP_ARRAYS.contains(&name) && !cur.contains_key(name) {
            return Err(format!(
                "the file has no [[{name}]]: the environment can change a {name} element the file declares, not add one"
            ));
        }
        let shown = if at.is_empty() {
            name.to_string()
        } else {
            format!("{at}.{name}")
        };
        let v = cur
            .entry(name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match v {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                let Some(which) = segs.next() else {
                    return Err(format!(
                        "{shown} is an array of tables: name an element, e.g. GREENBELT__{}__<NAME>__KEY",
                        shown.replace('.', "__").to_ascii_uppercase()
                    ));
                };
                let names: Vec<String> = items
                    .iter()
                    .map(|i| {
                        i.get("name")
                            .and_then(toml::Value::as_str)
                            .unwrap_or("")
                            .to_string()
                    })
                    .collect();
                let found = match which.parse::<usize>() {
                    Ok(i) if i < items.len() => Some(i),
                    Ok(_) => None,
                    Err(_) => names
                        .iter()
                        .position(|n| n.to_ascii_lowercase().replace('-', "_") == *which),
                };
                let Some(i) = found else {
                    return Err(format!(
                        "[[{shown}]] has no element \"{which}\": it has {} ({}); name one by its `name` or its 0-based index",
                        items.len(),
                        names
                            .iter()
                            .enumerate()
                            .map(|(i, n)| if n.is_empty() {
                                i.to_string()
                            } else {
                                format!("{i}: {n}")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                };
                match items.get_mut(i) {
                    Some(toml::Value::Table(t)) => t,
                    _ => return Err(format!("{shown}[{i}] is not a table")),
                }
            }
            _ => return Err(format!("{shown} is a value, not a table")),
        };
        at = shown;
    }
    for other in greenbelt_core::duration::spellings(key) {
        cur.remove(&other);
    }
    cur.insert(key.clone(), value);
    Ok(())
}

fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            Path::new("greenbelt.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn overload_settings_are_checked_naming_the_field() {
        let c = parse(
            "[server]\nqueue_budget_ms = 250\nshutdown_delay_ms = 5000\n[server.concurrency]\nalgorithm = \"gradient2\"\n[[deployments]]\nname = \"d\"\npriority = \"low\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.queue_budget_ms, 250);
        assert_eq!(c.server.shutdown_delay_ms, 5000);
        assert_eq!(
            c.server.concurrency.algorithm,
            crate::stages::limit::Algorithm::Gradient2
        );
        assert_eq!(
            c.deployments[0].priority,
            crate::stages::limit::Priority::Low
        );
        let e = parse("[server.concurrency]\nmin_limt = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("min_limt") && e.contains("line 2"), "{e}");
        let e = parse("[server.concurrency]\nnormal_share = 1.5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("[server.concurrency] normal_share"), "{e}");
        let e = parse("[server]\nqueue_budget_ms = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_budget must be more than 0s"), "{e}");
        let e = parse(
            "[[deployments]]\nname = \"d\"\npriority = \"urgent\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("urgent") || e.contains("priority"), "{e}");
    }

    #[test]
    fn a_deployment_takes_an_mlflow_model_uri() {
        let c = parse(
            "[[deployments]]\nname = \"scorer\"\nmodel = \"models:/fraud@challenger\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.deployments[0].model(), "fraud");
        assert_eq!(c.deployments[0].alias, "challenger");
        for bad in [
            "models:/fraud/3",
            "models:/fraud/latest",
            "models:/@x",
            "models:/fraud@",
        ] {
            let e = parse(
                &format!("[[deployments]]\nname = \"scorer\"\nmodel = \"{bad}\"\n"),
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("scorer") && e.contains("models:/NAME@ALIAS"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn autoscale_settings_parse_and_bad_values_name_the_field() {
        let c = parse(
            "[autoscale]\ninterval = \"1s\"\nreplicas = 3\n[[deployments]]\nname = \"d\"\n[deployments.autoscale]\nalgorithm = \"hpa\"\nmetric = \"rps\"\ntarget = 50\nmax_replicas = 8\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.autoscale.replicas, 3);
        let a = c.deployments[0].autoscale.as_ref().unwrap();
        assert_eq!(a.algorithm, greenbelt_core::autoscale::Algorithm::Hpa);
        assert_eq!(a.target, Some(50.0));
        assert!(parse("", &[]).unwrap().autoscale.enabled);
        for (text, want) in [
            (
                "[autoscale]\ninterval = \"often\"\n",
                "[autoscale] interval",
            ),
            ("[autoscale]\nreplicas = 0\n", "[autoscale] replicas"),
            ("[autoscale]\nreplica = 2\n", "replica"),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.autoscale]\ntarget = 0\n",
                "\"d\": autoscale.target",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.autoscale]\nmin_replicas = 4\nmax_replicas = 2\n",
                "autoscale.max_replicas",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.autoscale]\npanic_window = \"2m\"\n",
                "autoscale.panic_window",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.autoscale]\nstable_window = \"a minute\"\n",
                "autoscale.stable_window",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.autoscale]\nalgorithm = \"vpa\"\n",
                "vpa",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.autoscale]\ntolerence = 0.2\n",
                "tolerence",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn instance_bounds_parse_and_bad_values_name_the_field() {
        let c = parse(
            "[[deployments]]\nname = \"d\"\n[deployments.config]\ninstances = 2\n[deployments.instances]\nmin = 1\nmax = 4\ntarget = 2.5\nload_timeout = \"10s\"\n",
            &[],
        )
        .unwrap();
        let i = c.deployments[0].instances.as_ref().unwrap();
        assert_eq!((i.min, i.max, i.target), (1, Some(4), 2.5));
        assert!(
            parse("[[deployments]]\nname = \"d\"\n", &[])
                .unwrap()
                .deployments[0]
                .instances
                .is_none()
        );
        for (text, want) in [
            (
                "[[deployments]]\nname = \"d\"\n[deployments.instances]\nmin = 0\n",
                "\"d\": instances.min",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.instances]\nmin = 3\nmax = 2\n",
                "instances.max = 2 is below min = 3",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.instances]\nmax = 1000\n",
                "instances.max = 1000 must be at most 64",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.instances]\ntarget = -1\n",
                "instances.target",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.instances]\nload_timeout = \"eventually\"\n",
                "instances.load_timeout",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.instances]\nmaximum = 4\n",
                "maximum",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.config]\ninstances = 8\n[deployments.instances]\nmax = 4\n",
                "config.instances = 8 is above instances.max = 4",
            ),
            (
                "[[deployments]]\nname = \"d\"\n[deployments.config]\ninstances = 0\n",
                "config.instances = 0",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.server.http_addr, "127.0.0.1:8000");
        assert!(c.repository.load_on_startup);
    }

    #[test]
    fn telemetry_slo_and_alert_settings_are_checked_naming_the_field() {
        for (text, field) in [
            ("[telemetry]\nlog_sample = 0\n", "log_sample"),
            ("[telemetry]\nlog_sample = 1.5\n", "log_sample"),
            ("[telemetry]\nlog_queue = 0\n", "log_queue"),
            ("[tracing]\nsample_ratio = 2\n", "[tracing] sample_ratio"),
            ("[tracing]\nprotocol = \"thrift\"\n", "[tracing] protocol"),
            (
                "[tracing]\nendpoint = \"collector:4317\"\n",
                "[tracing] endpoint",
            ),
            ("[tracing]\nmax_queue = 0\n", "max_queue"),
            (
                "[telemetry.payload_log]\nfraction = 1.5\n",
                "[telemetry.payload_log] fraction",
            ),
            (
                "[telemetry.payload_log]\nsink = \"nats\"\n",
                "[telemetry.payload_log] nats_url",
            ),
            (
                "[telemetry.payload_log]\nsink = \"jsonl\"\nmax_files = 0\n",
                "max_files",
            ),
            ("[telemetry.payload_log]\nsink = \"kafka\"\n", "kafka"),
            ("[telemetry.payload_log]\nfracton = 0.5\n", "fracton"),
            ("[alerts]\neval_interval = \"soon\"\n", "eval_interval"),
            (
                "[[slo]]\ndeployment = \"m\"\nkind = \"latency\"\nobjective = 0.99\n",
                "threshold_ms",
            ),
            (
                "[[slo]]\ndeployment = \"m\"\nkind = \"availability\"\nobjective = 2\n",
                "objective",
            ),
            (
                "[[slo]]\ndeployment = \"m\"\nkind = \"availability\"\nobjective = 0.9\n[[slo]]\ndeployment = \"m\"\nkind = \"availability\"\nobjective = 0.99\n",
                "used twice",
            ),
            ("[cost]\ninterval = \"often\"\n", "[cost] interval"),
            ("[cost]\negress_class = \"moon\"\n", "moon"),
            ("[cost.prices]\ncpu_core_hour = -1\n", "cpu_core_hour"),
            ("[cost.prices]\ncpu_per_hour = 1\n", "cpu_per_hour"),
            ("[[budget]]\ndeployment = \"m\"\n", "amount"),
            (
                "[[budget]]\ndeployment = \"m\"\namount = 10\nperiod = \"1m\"\n",
                "shorter than an hour",
            ),
            (
                "[[budget]]\ndeployment = \"m\"\namount = 10\n[[budget]]\ndeployment = \"m\"\namount = 20\n",
                "used twice",
            ),
            (
                "[[budget]]\namount = 10\n",
                "exactly one of deployment or model",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert!(
            parse(
                "[[slo]]\ndeployment = \"m\"\nkind = \"bogus\"\nobjective = 0.9\n",
                &[]
            )
            .is_err()
        );
    }

    #[test]
    fn typos_are_errors_with_a_line() {
        let e = parse("[server]\nhttp_adr = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http_adr") && e.contains("line 2"), "{e}");
        let e = parse("[sever]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("sever"), "{e}");
        let e = parse("[server]\nhttp_addr = \"nope\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http_addr"), "{e}");
        let e = parse("[server]\nmax_inflight = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_inflight"), "{e}");
    }

    #[test]
    fn a_secret_can_come_from_a_file_named_by_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("db_url");
        std::fs::write(&f, "postgres://app:s3cret@db:5432/reg\n").unwrap();
        let path = f.to_str().unwrap();
        let c = parse("", &[("GREENBELT__REGISTRY__URL__FILE", path)]).unwrap();
        assert_eq!(
            c.registry.url.as_deref(),
            Some("postgres://app:s3cret@db:5432/reg")
        );
        let e = parse("", &[("GREENBELT__REGISTRY__URL__FILE", "/nonexistent/x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GREENBELT__REGISTRY__URL__FILE") && e.contains("/nonexistent/x"),
            "{e}"
        );
        let e = parse("", &[("GREENBELT__A__B__C", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GREENBELT__A__B__C") && e.contains("unknown field `a`"),
            "{e}"
        );
        let e = parse("", &[("GREENBELT__SERVER____X", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("__FILE"), "{e}");
    }

    #[test]
    fn env_reaches_nested_tables_and_deployments_by_name_or_index() {
        let file = "[server.concurrency]\nalgorithm = \"off\"\n\
                    [[deployments]]\nname = \"fraud-v2\"\nmodel = \"fraud\"\n\
                    [[deployments]]\nname = \"churn\"\nmodel = \"churn\"\n";
        let c = parse(
            file,
            &[
                ("GREENBELT__SERVER__CONCURRENCY__ALGORITHM", "gradient2"),
                ("GREENBELT__SERVER__CONCURRENCY__WINDOW", "250ms"),
                ("GREENBELT__DEPLOYMENTS__FRAUD_V2__PRIORITY", "low"),
                ("GREENBELT__DEPLOYMENTS__1__ALIAS", "canary"),
                ("GREENBELT__DEPLOYMENTS__CHURN__ROLLOUT__STRATEGY", "canary"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.concurrency.window_ms, 250);
        assert_eq!(
            format!("{:?}", c.server.concurrency.algorithm).to_ascii_lowercase(),
            "gradient2"
        );
        assert_eq!(
            format!("{:?}", c.deployments[0].priority).to_ascii_lowercase(),
            "low"
        );
        assert_eq!(c.deployments[1].alias, "canary");
        // `[[routes]]` (the old name) is reached as deployments too.
        let c = parse(
            "[[routes]]\nname = \"a\"\nmodel = \"a\"\n",
            &[("GREENBELT__DEPLOYMENTS__A__MODEL", "b")],
        )
        .unwrap();
        assert_eq!(c.deployments[0].model.as_deref(), Some("b"));
        for (env, want) in [
            (
                "GREENBELT__DEPLOYMENTS__NOPE__MODEL",
                "no element \"nope\": it has 2 (0: fraud-v2, 1: churn)",
            ),
            ("GREENBELT__DEPLOYMENTS__7__MODEL", "no element \"7\""),
            (
                "GREENBELT__DEPLOYMENTS__MODEL",
                "name an element, e.g. GREENBELT__DEPLOYMENTS__<NAME>__KEY",
            ),
            (
                "GREENBELT__SERVER__CONCURRENCY__ALGORITHM__X",
                "server.concurrency.algorithm is a value, not a table",
            ),
            (
                "GREENBELT__SERVER__HTTP_ADDR__X",
                "expected a string\nin `server.http_addr`",
            ),
        ] {
            let e = parse(file, &[(env, "x")]).unwrap_err().to_string();
            assert!(e.contains(env) && e.contains(want), "{env}: {e}");
        }
        let e = parse("", &[("GREENBELT__BUDGET__0__AMOUNT", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("the file has no [[budget]]"), "{e}");
    }

    #[test]
    fn durations_are_text_and_the_old_integer_keys_still_work() {
        let c = parse(
            "[server]\nrequest_timeout = \"2s\"\nqueue_budget = \"1500ms\"\nidle_timeout = \"2m\"\n\
             [registry]\npoll_interval_ms = 50\n[tracing]\nexport_interval = \"3s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.request_timeout_ms, 2000);
        assert_eq!(c.server.queue_budget_ms, 1500);
        assert_eq!(c.server.idle_timeout_ms, 120_000);
        assert_eq!(c.registry.poll_interval_ms, 50);
        assert_eq!(c.tracing.export_interval_ms, 3000);
        // Either spelling from the environment replaces the file's.
        let file = "[server]\nrequest_timeout = \"2s\"\n";
        for (var, v) in [
            ("GREENBELT__SERVER__REQUEST_TIMEOUT_MS", "700"),
            ("GREENBELT__SERVER__REQUEST_TIMEOUT", "700ms"),
        ] {
            let c = parse(file, &[(var, v)]).unwrap();
            assert_eq!(c.server.request_timeout_ms, 700, "{var}");
        }
        let c = parse(
            "[server]\nrequest_timeout_ms = 900\n",
            &[("GREENBELT__SERVER__REQUEST_TIMEOUT", "1s")],
        )
        .unwrap();
        assert_eq!(c.server.request_timeout_ms, 1000);
        // Written back in the one style.
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("request_timeout = \"1s\""), "{text}");
        assert!(!text.contains("_ms ="), "{text}");
        let e = parse("[server]\nrequest_timeout = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("request_timeout") && e.contains("line 2") && e.contains("\"10s\""),
            "{e}"
        );
        let e = parse("[server]\nrequest_timeout = \"0s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("request_timeout must be more than 0s"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let c = parse(
            "[server]\nhttp_addr = \"127.0.0.1:1\"\n",
            &[
                ("GREENBELT__SERVER__HTTP_ADDR", "0.0.0.0:9000"),
                ("GREENBELT__SERVER__MAX_INFLIGHT", "7"),
                ("GREENBELT__TELEMETRY__LOG_REQUESTS", "false"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.http_addr, "0.0.0.0:9000");
        assert_eq!(c.server.max_inflight, 7);
        assert!(!c.telemetry.log_requests);
        let e = parse(
            "[[routes]]\nname = \"fraud\"\n[[routes]]\nname = \"fraud\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("declared twice"), "{e}");
        let e = parse("", &[("GREENBELT__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("GREENBELT__SECTION__KEY"), "{e}");
    }

    #[test]
    fn release_example_parses_and_bad_release_settings_name_the_field() {
        let c = parse(
            include_str!("../../../examples/releases/greenbelt.toml"),
            &[],
        )
        .unwrap();
        let d = &c.deployments[0];
        assert_eq!(d.name, "fraud");
        assert_eq!(d.rollout.steps.len(), 4);
        assert!(c.server.allow_fault_injection);
        // `[[routes]]` is still accepted.
        let c = parse("[[routes]]\nname = \"a\"\n", &[]).unwrap();
        assert_eq!(c.deployments[0].alias, "champion");
        for (text, want) in [
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout]\nsteps = [{ set_weight = 120 }]\n",
                "set_weight = 120",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout]\nsteps = [{ set_weight = 10, pause = \"1s\" }]\n",
                "exactly one",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout]\nsteps = [{ pause = \"soon\" }]\n",
                "pause = \"soon\"",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout.analysis]\ninterval = \"1ms\"\n",
                "at least 10ms",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[[deployments.shadow]]\nfraction = 0.5\n",
                "exactly one of alias or version",
            ),
            (
                "[[deployments]]\nname = \"a\"\nsticky_header = \"bad header\"\n",
                "sticky_header",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout]\non_registry_error = \"panic\"\n",
                "panic",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout]\nregistry_error_grace = \"a while\"\n",
                "registry_error_grace",
            ),
            (
                "[[deployments]]\nname = \"a\"\n[deployments.rollout]\nstrategy = \"rainbow\"\n",
                "rainbow",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
