//! Model runtimes. Every backend implements [`Model`]; the serving crate only
//! ever sees `Arc<dyn Model>`.
//!
//! Backends:
//! - `native`: greenbelt-tabular, the engine for tree ensembles, linear
//!   models and ONNX-ML preprocessing; equal to ONNX Runtime on those graphs
//!   and several times faster per call. `auto` tries it first.
//! - `onnxruntime`: ONNX Runtime through the `ort` crate, loaded dynamically
//!   (no download at build time). The production backend.
//! - `tract`: pure Rust, zero set-up; used for models it runs correctly.
//!
//! This crate owns loading and running a single model file. It must not know
//! about HTTP, batching or repositories.

use std::path::Path;
use std::sync::Arc;

use greenbelt_core::{Signature, Tensor};
use serde::{Deserialize, Serialize};

pub mod error;
#[cfg(feature = "native")]
pub mod native;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod ops;
#[cfg(feature = "tract")]
pub mod tract;

pub use error::RuntimeError;

/// A loaded model that can run inference. Implementations are blocking and
/// thread-safe: callers run them off the async executor.
pub trait Model: Send + Sync {
    /// Inputs and outputs, read from the graph (-1 for dynamic dims).
    fn signature(&self) -> &Signature;

    /// Which backend runs this model.
    fn backend(&self) -> Backend;

    /// Run one (possibly batched) request. `inputs` were validated against the
    /// signature. Returns every output, in signature order.
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;

    /// Whether a call is pure, bounded computation (no locks held across
    /// calls, no sleeps, no I/O), so that a few-microsecond call may run on
    /// the request's own thread. Only the native engine says yes.
    fn inline_safe(&self) -> bool {
        false
    }

    /// The copies of the model loaded now, when the backend keeps a pool
    /// of them (ONNX Runtime: one session each, each runs one call at a
    /// time). `None`: one thread-safe object whose calls run side by side
    /// (native, tract), so the number of instances is only a concurrency
    /// width that the caller keeps.
    fn instances(&self) -> Option<usize> {
        None
    }

    /// Grow or shrink the pool to `n` copies (clamped to
    /// `1..=`[`MAX_INSTANCES`]). Growing loads new copies: slow, so call it
    /// off the request path. Shrinking takes copies out of service first and
    /// then waits for the call each may be running. Returns the count loaded
    /// afterwards (`None` without a pool); an error leaves what was loaded
    /// serving.
    fn set_instances(&self, n: usize) -> Result<Option<usize>, RuntimeError> {
        let _ = n;
        Ok(None)
    }
}

/// Most copies one model may keep in its pool (ONNX Runtime sessions).
pub const MAX_INSTANCES: usize = 64;

/// The backend a model runs on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The native engine when it runs every operator of the graph; else ONNX
    /// Runtime when its library is available; else tract when every operator
    /// is one tract runs correctly; else a load error.
    #[default]
    Auto,
    /// Greenbelt's own engine (the operators of tabular models).
    Native,
    /// ONNX Runtime, loaded from its shared library.
    Onnxruntime,
    /// tract, the pure-Rust ONNX engine.
    Tract,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Native => "native",
            Backend::Onnxruntime => "onnxruntime",
            Backend::Tract => "tract",
        }
    }

    /// The V2 `platform` string reported in model metadata.
    pub fn platform(self) -> &'static str {
        match self {
            Backend::Auto | Backend::Onnxruntime => "onnxruntime_onnx",
            Backend::Native => "greenbelt_native_onnx",
            Backend::Tract => "tract_onnx",
        }
    }
}

/// Where a model runs. Only ONNX Runtime runs models on a GPU, through its
/// CUDA execution provider (cargo feature `cuda`, on by default: it needs no
/// GPU to build, only the onnxruntime-gpu library to use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(i32),
}

impl Device {
    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Device, String> {
        let bad =
            || format!("device \"{s}\" is not one of cpu, cuda, cuda:N (N a CUDA device ordinal)");
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<u16>()
                    .map(|n| Device::Cuda(i32::from(n)))
                    .map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Device, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How to load one model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub backend: Backend,
    /// Threads one inference may use inside the runtime (0 = runtime default).
    pub intra_op_threads: usize,
    /// Parallel instances of the model (ONNX Runtime sessions); each runs one
    /// inference at a time.
    pub instances: usize,
    /// Where it runs; anything but the CPU needs ONNX Runtime.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            backend: Backend::Auto,
            intra_op_threads: 1,
            instances: 1,
            device: Device::Cpu,
        }
    }
}

/// Which runtimes this process can use; built once at start-up.
#[derive(Clone, Default)]
pub struct Runtimes {
    #[cfg(feature = "onnxruntime")]
    pub onnxruntime: Option<Arc<onnxruntime::OrtRuntime>>,
    /// Why ONNX Runtime is not available, when it is not.
    pub onnxruntime_missing: Option<String>,
}

impl Runtimes {
    /// Probe the runtimes. `ort_library` is an explicitly configured path to
    /// `libonnxruntime.so`; without it the usual places are searched.
    pub fn probe(ort_library: Option<&Path>) -> Runtimes {
        #[cfg(feature = "onnxruntime")]
        {
            match onnxruntime::OrtRuntime::shared(ort_library) {
                Ok(rt) => Runtimes {
                    onnxruntime: Some(rt),
                    onnxruntime_missing: None,
                },
                Err(e) => Runtimes {
                    onnxruntime: None,
                    onnxruntime_missing: Some(match e {
                        RuntimeError::LibraryUnavailable(why) => why,
                        other => other.to_string(),
                    }),
                },
            }
        }
        #[cfg(not(feature = "onnxruntime"))]
        {
            let _ = ort_library;
            Runtimes {
                onnxruntime_missing: Some(
                    "this build has no ONNX Runtime backend (cargo feature \"onnxruntime\" is off)"
                        .into(),
                ),
            }
        }
    }

    /// Whether tree ensembles can be served: the native engine is built in,
    /// or ONNX Runtime is available (tract does not run them correctly).
    pub fn runs_trees(&self) -> bool {
        cfg!(feature = "native") || self.ort_available()
    }

    /// A description of what is available, for start-up logs and metadata.
    pub fn describe(&self) -> String {
        let native = if cfg!(feature = "native") {
            "native (tabular graphs), "
        } else {
            ""
        };
        #[cfg(feature = "onnxruntime")]
        if let Some(rt) = &self.onnxruntime {
            return format!(
                "{native}onnxruntime {} ({}), tract",
                rt.version(),
                rt.path().display()
            );
        }
        format!(
            "{native}tract; onnxruntime unavailable: {}",
            self.onnxruntime_missing.as_deref().unwrap_or("unknown")
        )
    }

    /// Load the ONNX model at `path` with the chosen backend.
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Arc<dyn Model>, RuntimeError> {
        if !path.is_file() {
            return Err(RuntimeError::Load {
                path: path.to_path_buf(),
                reason: "file not found".into(),
            });
        }
        if opts.device.is_gpu() {
            return match opts.backend {
                Backend::Auto | Backend::Onnxruntime => self.load_ort(path, opts),
                other => Err(RuntimeError::Load {
                    path: path.to_path_buf(),
                    reason: format!(
                        "backend \"{}\" runs on the CPU only; device = \"{}\" needs backend = \"onnxruntime\" (or \"auto\")",
                        other.as_str(),
                        opts.device
                    ),
                }),
            };
        }
        match opts.backend {
            Backend::Native => self.load_native(path),
            Backend::Onnxruntime => self.load_ort(path, opts),
            Backend::Tract => self.load_tract(path, opts),
            Backend::Auto => {
                // The native engine refuses any graph it does not run whole
                // (naming the operator); then the general runtimes take it.
                // Neural graphs (MatMul layers) go to ONNX Runtime when it is
                // there: its GEMM beats the native engine's at large batches
                // (docs/efficiency.md); trees and linear models stay native.
                #[cfg(feature = "native")]
                match native::NativeModel::load(path) {
                    Ok(m)
                        if self.ort_available() && m.operators().iter().any(|o| o == ":MatMul") =>
                    {
                        tracing::debug!(path = %path.display(), "a MatMul graph: ONNX Runtime rather than the native engine");
                    }
                    Ok(m) => return Ok(Arc::new(m)),
                    Err(why) => tracing::debug!(
                        path = %path.display(),
                        %why,
                        "native engine declined the model"
                    ),
                }
                if self.ort_available() {
                    return self.load_ort(path, opts);
                }
                let report = ops::inspect(path)?;
                if let Some(op) = report.first_unsafe_for_tract() {
                    return Err(RuntimeError::UnsupportedOperator {
                        path: path.to_path_buf(),
                        operator: op.to_string(),
                        remedy: format!(
                            "tract does not run \"{op}\" correctly and ONNX Runtime is not available ({}); install it (pip install onnxruntime) or set ORT_DYLIB_PATH to libonnxruntime.so",
                            self.onnxruntime_missing.as_deref().unwrap_or("not found")
                        ),
                    });
                }
                self.load_tract(path, opts)
            }
        }
    }

    fn load_native(&self, path: &Path) -> Result<Arc<dyn Model>, RuntimeError> {
        #[cfg(feature = "native")]
        {
            Ok(Arc::new(native::NativeModel::load(path)?))
        }
        #[cfg(not(feature = "native"))]
        {
            let _ = path;
            Err(RuntimeError::LibraryUnavailable(
                "this build has no native backend (cargo feature \"native\" is off)".into(),
            ))
        }
    }

    fn ort_available(&self) -> bool {
        #[cfg(feature = "onnxruntime")]
        {
            self.onnxruntime.is_some()
        }
        #[cfg(not(feature = "onnxruntime"))]
        {
            false
        }
    }

    fn load_ort(&self, path: &Path, opts: &LoadOptions) -> Result<Arc<dyn Model>, RuntimeError> {
        #[cfg(feature = "onnxruntime")]
        if let Some(rt) = &self.onnxruntime {
            return Ok(Arc::new(rt.load(path, opts)?));
        }
        let _ = (path, opts);
        Err(RuntimeError::LibraryUnavailable(
            self.onnxruntime_missing
                .clone()
                .unwrap_or_else(|| "ONNX Runtime is not available".into()),
        ))
    }

    fn load_tract(&self, path: &Path, opts: &LoadOptions) -> Result<Arc<dyn Model>, RuntimeError> {
        #[cfg(feature = "tract")]
        {
            let _ = opts;
            Ok(Arc::new(tract::TractModel::load(path)?))
        }
        #[cfg(not(feature = "tract"))]
        {
            let _ = (path, opts);
            Err(RuntimeError::LibraryUnavailable(
                "this build has no tract backend (cargo feature \"tract\" is off)".into(),
            ))
        }
    }
}
