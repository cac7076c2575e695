//! Serving from the feature store: a model that declares a feature service
//! can be called with entity keys instead of its feature tensor. The server
//! reads the service's features for those keys from the online store (one
//! read for every entity and view), assembles the input tensor in the
//! service's feature order, and returns each cell's status beside the
//! model's outputs.
//!
//! When the store fails and the feature service has a fallback, cells come
//! back `STALE` (the last value read) or `DEFAULT` (the feature's default);
//! the response then carries [`DEGRADED_HEADER`]`: features` (REST header,
//! gRPC metadata). The store read gets at most half of the request's
//! remaining budget, so a fallback still has time to answer.
//!
//! The store itself lives in `greenbelt-features` (DataFusion and all);
//! this crate only sees the [`FeatureSource`] trait, which the binary
//! implements over it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use greenbelt_core::{DataType, InferRequest, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::ServeError;
use crate::repository::ServedVersion;

/// Name of the extra output that carries per-feature statuses
/// (`BYTES [rows, features]`: PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE,
/// NULL_VALUE, STALE, DEFAULT).
pub const STATUS_OUTPUT: &str = "feature_status";

/// Response header (gRPC: metadata key) on an answer built from feature
/// fallbacks; its value says what degraded (`features`).
pub const DEGRADED_HEADER: &str = "x-greenbelt-degraded";

/// Statuses of cells served from a fallback while the store failed.
pub const FALLBACK_STATUSES: [&str; 2] = ["STALE", "DEFAULT"];

/// `[features]` in a model's `config.toml` (or `[deployments.config.features]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureInputConfig {
    /// The feature service whose features, in order, form the model input.
    pub service: String,
    /// The model input to fill; default: the model's only input.
    #[serde(default)]
    pub input: Option<String>,
    /// What a feature that is not PRESENT becomes.
    #[serde(default)]
    pub missing: Missing,
}

/// What to do with a feature the online store could not give.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Refuse the request (400), naming the entity and the feature.
    #[default]
    Error,
    /// Serve it as NaN (trees route NaN down their missing branch).
    Nan,
    /// Serve it as 0.
    Zero,
}

/// Feature values for a batch of entities, row-major.
#[derive(Debug, Clone, Default)]
pub struct FeatureRows {
    /// `view:feature`, in the service's order.
    pub names: Vec<String>,
    /// `rows × names.len()` values; `None` unless PRESENT, STALE or DEFAULT.
    pub values: Vec<Option<f64>>,
    /// `rows × names.len()` statuses.
    pub statuses: Vec<&'static str>,
    pub rows: usize,
}

/// Why a lookup failed.
#[derive(Debug, Clone)]
pub enum LookupError {
    /// The request's keys are wrong (400).
    Invalid(String),
    /// The store failed (503).
    Unavailable(String),
}

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<FeatureRows, LookupError>> + Send + 'a>>;

/// Where entity keys become feature values (the online store).
pub trait FeatureSource: Send + Sync + 'static {
    /// The join keys a service's entities need, in order.
    fn join_keys(&self, service: &str) -> Result<Vec<String>, String>;
    /// The service's features, in order (`view:feature`).
    fn feature_names(&self, service: &str) -> Result<Vec<String>, String>;
    /// Read `service` for `entities` (join key → one value per row); the
    /// answer is needed by `deadline` (the request's), when it has one.
    fn lookup<'a>(
        &'a self,
        service: &'a str,
        entities: BTreeMap<String, Vec<serde_json::Value>>,
        deadline: Option<tokio::time::Instant>,
    ) -> LookupFuture<'a>;
    /// Check a feature matrix a caller sent directly (`rows × width`,
    /// row-major, in the service's order) against the features' contracts;
    /// the message names the row, the feature and the rule.
    fn check(&self, service: &str, width: usize, values: &[f64]) -> Result<(), String>;
    /// Whether a read of `service` can be answered now: `Err(why)` when the
    /// store is known to be failing (its breaker is open) and the service
    /// has no fallback. Model readiness reports it.
    fn can_serve(&self, service: &str) -> Result<(), String> {
        let _ = service;
        Ok(())
    }
}

/// Whether `served` can answer now as far as features go: a model that
/// reads a feature service without a fallback cannot while the store is
/// failing. `Err` says why (for the model's readiness).
pub fn readiness(served: &ServedVersion, source: Option<&dyn FeatureSource>) -> Result<(), String> {
    match (&served.features, source) {
        (Some(cfg), Some(source)) => source.can_serve(&cfg.service).map_err(|why| {
            format!(
                "model \"{}\" reads feature service \"{}\": {why}",
                served.model_name, cfg.service
            )
        }),
        _ => Ok(()),
    }
}

/// Check a model's `[features]` against its signature and the store, at load.
pub fn check_config(
    cfg: &FeatureInputConfig,
    served_inputs: &[greenbelt_core::TensorSpec],
    source: Option<&dyn FeatureSource>,
) -> Result<(), String> {
    let input = target_input(cfg, served_inputs)?;
    if !matches!(input.datatype, DataType::Fp32 | DataType::Fp64) {
        return Err(format!(
            "[features] input \"{}\" is {:?}; features fill FP32 or FP64 inputs",
            input.name, input.datatype
        ));
    }
    let Some(source) = source else {
        return Ok(());
    };
    let names = source
        .feature_names(&cfg.service)
        .map_err(|e| format!("[features] service: {e}"))?;
    let width = input.shape.get(1).copied().unwrap_or(-1);
    if input.shape.len() != 2 || (width >= 0 && width != names.len() as i64) {
        return Err(format!(
            "[features] service \"{}\" has {} features but input \"{}\" has shape {:?}; the model needs a [-1, {}] input",
            cfg.service,
            names.len(),
            input.name,
            input.shape,
            names.len()
        ));
    }
    Ok(())
}

fn target_input<'a>(
    cfg: &FeatureInputConfig,
    inputs: &'a [greenbelt_core::TensorSpec],
) -> Result<&'a greenbelt_core::TensorSpec, String> {
    match &cfg.input {
        Some(name) => inputs.iter().find(|s| &s.name == name).ok_or_else(|| {
            format!(
                "[features] input \"{name}\" is not a model input; inputs are {:?}",
                inputs.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        }),
        None => match inputs {
            [only] => Ok(only),
            _ => Err(format!(
                "[features] input is required: the model has {} inputs",
                inputs.len()
            )),
        },
    }
}

/// The statuses to append to the response, when the request was assembled
/// from the store.
pub struct Assembled {
    pub statuses: Tensor,
    /// The caller asked for named outputs and did not name the statuses.
    pub hide: bool,
    /// Some cells came from fallbacks (STALE or DEFAULT).
    pub degraded: bool,
}

/// If `served` reads a feature service and the request carries entity keys
/// instead of the feature tensor, replace them with the tensor.
pub async fn assemble(
    served: &ServedVersion,
    source: Option<&dyn FeatureSource>,
    mut req: InferRequest,
    deadline: Option<tokio::time::Instant>,
) -> Result<(InferRequest, Option<Assembled>), ServeError> {
    let Some(cfg) = &served.features else {
        return Ok((req, None));
    };
    let input = target_input(cfg, &served.signature.inputs).map_err(ServeError::Internal)?;
    if let Some(t) = req.inputs.iter().find(|t| t.name == input.name) {
        // The caller sent the features themselves: they must still keep
        // the features' contracts.
        if let Some(source) = source {
            let width = t.shape.get(1).copied().unwrap_or(0).max(0) as usize;
            let values: Option<Vec<f64>> = match &t.data {
                TensorData::Fp32(v) => Some(v.iter().map(|x| f64::from(*x)).collect()),
                TensorData::Fp64(v) => Some(v.clone()),
                _ => None,
            };
            if let Some(values) = values
                && t.shape.len() == 2
            {
                source
                    .check(&cfg.service, width, &values)
                    .map_err(|e| ServeError::InvalidInput(format!("input \"{}\": {e}", t.name)))?;
            }
        }
        return Ok((req, None));
    }
    let Some(source) = source else {
        return Err(ServeError::ModelNotReady {
            model: served.model_name.to_string(),
            reason: format!(
                "it reads feature service \"{}\" but this server has no feature store (features.toml); send input \"{}\" instead",
                cfg.service, input.name
            ),
        });
    };
    let keys = source
        .join_keys(&cfg.service)
        .map_err(ServeError::Internal)?;
    let mut entities = BTreeMap::new();
    let mut rows = None;
    for key in &keys {
        let t = req.inputs.iter().find(|t| &t.name == key).ok_or_else(|| {
            ServeError::InvalidInput(format!(
                "model \"{}\" reads feature service \"{}\": send input \"{}\" (the features as {:?} [N, F]) or the entity keys {:?} as 1-D inputs; \"{key}\" is missing",
                served.model_name, cfg.service, input.name, input.datatype, keys
            ))
        })?;
        let values = key_values(t)?;
        if *rows.get_or_insert(values.len()) != values.len() {
            return Err(ServeError::InvalidInput(format!(
                "entity key inputs must have the same number of rows: \"{key}\" has {}, \"{}\" has {}",
                values.len(),
                keys[0],
                rows.unwrap_or(0)
            )));
        }
        entities.insert(key.clone(), values);
    }
    if let Some(extra) = req.inputs.iter().find(|t| !keys.contains(&t.name)) {
        return Err(ServeError::InvalidInput(format!(
            "input \"{}\" is neither model input \"{}\" nor an entity key of feature service \"{}\" ({keys:?})",
            extra.name, input.name, cfg.service
        )));
    }
    let got = source
        .lookup(&cfg.service, entities.clone(), deadline)
        .await
        .map_err(|e| match e {
            LookupError::Invalid(m) => ServeError::InvalidInput(m),
            LookupError::Unavailable(m) => ServeError::Overloaded {
                what: format!("the online feature store failed: {m}"),
                retry_after_s: 1,
            },
        })?;
    let width = got.names.len();
    if input.shape.len() != 2 || (input.shape[1] >= 0 && input.shape[1] != width as i64) {
        return Err(ServeError::Internal(format!(
            "model \"{}\" input \"{}\" has shape {:?} but feature service \"{}\" gives {width} features",
            served.model_name, input.name, input.shape, cfg.service
        )));
    }
    let mut data = Vec::with_capacity(got.values.len());
    for (i, v) in got.values.iter().enumerate() {
        data.push(match (v, cfg.missing) {
            (Some(x), _) => *x,
            (None, Missing::Nan) => f64::NAN,
            (None, Missing::Zero) => 0.0,
            (None, Missing::Error) => {
                let (row, col) = (i / width.max(1), i % width.max(1));
                let who: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        let v = entities.get(k).and_then(|v| v.get(row));
                        format!("{k}={}", v.map_or("?".into(), |v| v.to_string()))
                    })
                    .collect();
                return Err(ServeError::InvalidInput(format!(
                    "row {row} ({}): feature \"{}\" is {}; set [features] missing = \"nan\" or \"zero\" to serve it anyway",
                    who.join(", "),
                    got.names.get(col).map_or("?", String::as_str),
                    got.statuses.get(i).copied().unwrap_or("missing")
                )));
            }
        });
    }
    let shape = vec![got.rows as i64, width as i64];
    let tensor_data = match input.datatype {
        DataType::Fp64 => TensorData::Fp64(data),
        _ => TensorData::Fp32(data.iter().map(|x| *x as f32).collect()),
    };
    let features = Tensor::new(input.name.clone(), shape.clone(), tensor_data)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let statuses = Tensor::new(
        STATUS_OUTPUT.to_string(),
        shape,
        TensorData::Bytes(
            got.statuses
                .iter()
                .map(|s| bytes::Bytes::from_static(s.as_bytes()))
                .collect(),
        ),
    )
    .map_err(|e| ServeError::Internal(e.to_string()))?;
    let degraded = got.statuses.iter().any(|s| FALLBACK_STATUSES.contains(s));
    let asked = req.outputs.iter().any(|o| o.name == STATUS_OUTPUT);
    let hide = !req.outputs.is_empty() && !asked;
    req.outputs.retain(|o| o.name != STATUS_OUTPUT);
    req.inputs = vec![features];
    Ok((
        req,
        Some(Assembled {
            statuses,
            hide,
            degraded,
        }),
    ))
}

/// A 1-D (or `[N, 1]`) key input as JSON values: strings for BYTES,
/// integers, booleans.
fn key_values(t: &Tensor) -> Result<Vec<serde_json::Value>, ServeError> {
    let one_d = t.shape.len() == 1 || (t.shape.len() == 2 && t.shape[1] == 1);
    if !one_d {
        return Err(ServeError::InvalidInput(format!(
            "entity key input \"{}\" must be 1-D ([N]) or [N, 1]; it is {:?}",
            t.name, t.shape
        )));
    }
    let ints = |v: Vec<i64>| v.into_iter().map(serde_json::Value::from).collect();
    Ok(match &t.data {
        TensorData::Bytes(b) => b
            .iter()
            .enumerate()
            .map(|(i, s)| {
                std::str::from_utf8(s)
                    .map(|s| serde_json::Value::String(s.to_string()))
                    .map_err(|_| {
                        ServeError::InvalidInput(format!(
                            "entity key input \"{}\"[{i}] is not UTF-8",
                            t.name
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
        TensorData::Int64(v) => ints(v.clone()),
        TensorData::Int32(v) => ints(v.iter().map(|x| i64::from(*x)).collect()),
        TensorData::Uint32(v) => ints(v.iter().map(|x| i64::from(*x)).collect()),
        TensorData::Bool(v) => v.iter().map(|b| serde_json::Value::Bool(*b)).collect(),
        _ => {
            return Err(ServeError::InvalidInput(format!(
                "entity key input \"{}\" must be BYTES (strings), INT32/INT64 or BOOL",
                t.name
            )));
        }
    })
}
