//! The ONNX Runtime backend, through `ort` with `load-dynamic`.
//!
//! The `ort` crate panics on first use when its library is missing, so no
//! `ort` API is touched before [`OrtRuntime::init`] has loaded and
//! version-checked a library: an `OrtModel` can only be built from an
//! `OrtRuntime`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

use bytes_free::to_strings;
use greenbelt_core::{DataType, Signature, Tensor, TensorData, TensorSpec};
use half::f16;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{
    DynMapValueType, DynSequenceValueType, DynValue, TensorElementType, TensorRef, ValueType,
};

use crate::error::RuntimeError;
use crate::{Backend, Device, LoadOptions, MAX_INSTANCES, Model};

/// Oldest ONNX Runtime this build talks to (`ort` is built with `api-31`).
pub const MIN_VERSION: &str = "1.31";

/// A loaded, version-checked ONNX Runtime library and its environment.
pub struct OrtRuntime {
    env: Environment,
    path: PathBuf,
    version: String,
}

impl OrtRuntime {
    /// Find and load `libonnxruntime.so`: the configured path, then
    /// `ORT_DYLIB_PATH`, then beside the binary, then `.greenbelt/onnxruntime`
    /// under the working directory, then a Python `onnxruntime` installation.
    /// The process-wide runtime: ONNX Runtime allows one environment per
    /// process, so the first successful initialisation is shared (later
    /// calls get it whatever path they name).
    pub fn shared(configured: Option<&Path>) -> Result<std::sync::Arc<OrtRuntime>, RuntimeError> {
        static SHARED: std::sync::Mutex<Option<std::sync::Arc<OrtRuntime>>> =
            std::sync::Mutex::new(None);
        let mut slot = SHARED
            .lock()
            .map_err(|_| RuntimeError::LibraryUnavailable("runtime lock poisoned".into()))?;
        if let Some(rt) = slot.as_ref() {
            return Ok(rt.clone());
        }
        let rt = std::sync::Arc::new(OrtRuntime::init(configured)?);
        *slot = Some(rt.clone());
        Ok(rt)
    }

    pub fn init(configured: Option<&Path>) -> Result<OrtRuntime, RuntimeError> {
        let candidates = candidates(configured);
        if candidates.is_empty() {
            return Err(RuntimeError::LibraryUnavailable(format!(
                "libonnxruntime.so (>= {MIN_VERSION}) not found: set [runtime] onnxruntime_library or ORT_DYLIB_PATH, put it beside the greenbelt binary, or `pip install onnxruntime`"
            )));
        }
        let mut errors = Vec::new();
        for path in candidates {
            match ort::init_from(&path) {
                Ok(builder) => match builder.with_name("greenbelt").build() {
                    Ok(env) => {
                        let version = version_of(&path);
                        return Ok(OrtRuntime { env, path, version });
                    }
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                },
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(RuntimeError::LibraryUnavailable(format!(
            "no usable libonnxruntime.so (need >= {MIN_VERSION}): {}",
            errors.join("; ")
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The execution providers this library was built with, e.g.
    /// `["CPUExecutionProvider"]` for the `onnxruntime` wheel's library and
    /// `CUDAExecutionProvider` besides for `onnxruntime-gpu`'s.
    pub fn execution_providers(&self) -> Vec<&'static str> {
        execution_providers()
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Load a model into `opts.instances` sessions (more can be added and
    /// removed later, see [`Model::set_instances`]).
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<OrtModel, RuntimeError> {
        let session = SessionSpec {
            intra_op_threads: opts.intra_op_threads,
            device: opts.device,
            library: self.path.clone(),
        };
        let first = new_session(&self.env, path, &session)?;
        let mut signature = Signature::default();
        let mut outputs = Vec::new();
        for input in first.inputs() {
            let (datatype, shape) =
                tensor_type(input.dtype()).ok_or_else(|| RuntimeError::Load {
                    path: path.to_path_buf(),
                    reason: format!(
                        "input \"{}\" has type {:?}, which V2 tensors cannot carry",
                        input.name(),
                        input.dtype()
                    ),
                })?;
            signature
                .inputs
                .push(TensorSpec::new(input.name(), datatype, shape));
        }
        for output in first.outputs() {
            let (kind, datatype, shape) = match tensor_type(output.dtype()) {
                Some((d, s)) => (OutputKind::Tensor, d, s),
                None if is_zipmap(output.dtype()) => {
                    (OutputKind::ZipMap, DataType::Fp32, vec![-1, -1])
                }
                None => {
                    return Err(RuntimeError::Load {
                        path: path.to_path_buf(),
                        reason: format!(
                            "output \"{}\" has type {:?}, which V2 tensors cannot carry",
                            output.name(),
                            output.dtype()
                        ),
                    });
                }
            };
            signature
                .outputs
                .push(TensorSpec::new(output.name(), datatype, shape));
            outputs.push(kind);
        }
        let sessions: Box<[Mutex<Option<Session>>]> =
            (0..MAX_INSTANCES).map(|_| Mutex::new(None)).collect();
        if let Some(slot) = sessions.first() {
            *slot
                .lock()
                .map_err(|_| RuntimeError::Inference("session lock poisoned".into()))? =
                Some(first);
        }
        let model = OrtModel {
            sessions,
            active: AtomicUsize::new(1),
            next: AtomicUsize::new(0),
            resize: Mutex::new(()),
            env: self.env.clone(),
            path: path.to_path_buf(),
            session,
            signature,
            outputs,
        };
        model.set_instances(opts.instances)?;
        Ok(model)
    }
}

/// How each session of a model is made.
struct SessionSpec {
    intra_op_threads: usize,
    device: Device,
    /// The library's path, for errors.
    library: PathBuf,
}

/// One ONNX Runtime session of the model at `path`.
fn new_session(
    env: &Environment,
    path: &Path,
    spec: &SessionSpec,
) -> Result<Session, RuntimeError> {
    let load_err = |e: ort::Error| RuntimeError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut builder = Session::builder(env).map_err(load_err)?;
    if spec.intra_op_threads > 0 {
        builder = builder
            .with_intra_threads(spec.intra_op_threads)
            .map_err(|e| load_err(e.into()))?;
    }
    if let Device::Cuda(id) = spec.device {
        builder = on_cuda(builder, id, path, &spec.library)?;
    }
    builder.commit_from_file(path).map_err(load_err)
}

/// The execution providers the loaded library was built with.
fn execution_providers() -> Vec<&'static str> {
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut out = vec!["CPUExecutionProvider"];
    #[cfg(feature = "cuda")]
    {
        use ort::ep::ExecutionProvider;
        if matches!(ort::ep::CUDA::is_available(), Ok(true)) {
            out.push(ort::ep::CUDA::NAME);
        }
    }
    out
}

/// Put the session on CUDA device `id`, failing (not falling back to the
/// CPU) when the library or the machine cannot.
fn on_cuda(
    builder: ort::session::builder::SessionBuilder,
    id: i32,
    path: &Path,
    library: &Path,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    let refuse = |reason: String| RuntimeError::Load {
        path: path.to_path_buf(),
        reason,
    };
    #[cfg(feature = "cuda")]
    {
        use ort::ep::ExecutionProvider;
        if !matches!(ort::ep::CUDA::is_available(), Ok(true)) {
            return Err(refuse(format!(
                "device = \"cuda\": the ONNX Runtime library at {} has no CUDA execution provider (it has {}); point [runtime] onnxruntime_library at the library of onnxruntime-gpu",
                library.display(),
                execution_providers().join(", ")
            )));
        }
        builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure()])
            .map_err(|e| {
                refuse(format!(
                    "device = \"cuda:{id}\": ONNX Runtime's CUDA execution provider did not start: {e}"
                ))
            })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (builder, id, library);
        Err(refuse(
            "device = \"cuda\": this greenbelt was built without the cargo feature \"cuda\" (greenbelt-runtime/cuda)".into(),
        ))
    }
}

fn version_of(path: &Path) -> String {
    let from_info = ort::info()
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix("git-branch=rel-"))
        .map(str::to_string);
    from_info.unwrap_or_else(|| {
        // `libonnxruntime.so` is often a link to `libonnxruntime.so.1.32.0`.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.split_once(".so.")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "unknown".into())
    })
}

/// Places to look for the library, most explicit first; only existing files.
fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(p) = configured {
        // An explicit setting is used alone: a wrong path must be reported,
        // not silently replaced by another library.
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.extend(find_in(&dir));
        out.extend(find_in(&dir.join("lib")));
    }
    out.extend(find_in(Path::new(".greenbelt/onnxruntime")));
    if let Some(dir) = python_onnxruntime_dir() {
        out.extend(find_in(&dir.join("capi")));
    }
    out
}

/// `libonnxruntime.so*` files in `dir`, newest-looking name first.
fn find_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found.reverse();
    found
}

/// Ask `python3` where its `onnxruntime` package lives (bounded wait).
fn python_onnxruntime_dir() -> Option<PathBuf> {
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('onnxruntime');print(os.path.dirname(s.origin) if s else '')",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take()?;
    std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        let mut stdout = stdout;
        let _ = stdout.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let out = rx.recv_timeout(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    let dir = out.ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn datatype_of(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn tensor_type(v: &ValueType) -> Option<(DataType, Vec<i64>)> {
    match v {
        ValueType::Tensor { ty, shape, .. } => Some((
            datatype_of(*ty)?,
            shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect(),
        )),
        _ => None,
    }
}

/// scikit-learn's ZipMap output: a sequence of maps from class to probability.
fn is_zipmap(v: &ValueType) -> bool {
    match v {
        ValueType::Sequence(inner) => matches!(
            inner.as_ref(),
            ValueType::Map { value, .. } if *value == TensorElementType::Float32
        ),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum OutputKind {
    Tensor,
    /// Converted to a dense FP32 `[rows, classes]` tensor, classes in key order.
    ZipMap,
}

/// A model loaded into a pool of ONNX Runtime sessions, each running one
/// call at a time. The pool has [`MAX_INSTANCES`] slots, so resizing never
/// reallocates what calls read: the first `active` slots hold a session;
/// a slot past `active` may still hold one that is finishing its last call.
pub struct OrtModel {
    sessions: Box<[Mutex<Option<Session>>]>,
    /// Sessions in service (slots `0..active`).
    active: AtomicUsize,
    next: AtomicUsize,
    /// One resize at a time (never taken by a call).
    resize: Mutex<()>,
    env: Environment,
    path: PathBuf,
    session: SessionSpec,
    signature: Signature,
    outputs: Vec<OutputKind>,
}

impl Model for OrtModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn backend(&self) -> Backend {
        Backend::Onnxruntime
    }

    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let poisoned = || RuntimeError::Inference("session lock poisoned".into());
        // A slot emptied by a shrink while this call waited on it sends the
        // call round again; sessions in service are never empty, so the
        // next round finds one. The bound only guards against a bug.
        for _ in 0..MAX_INSTANCES {
            // Prefer a free session; otherwise wait on the round-robin choice.
            let n = self.active.load(Ordering::Acquire).max(1);
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                if let Some(s) = self.sessions.get((start + i) % n) {
                    match s.try_lock() {
                        Ok(mut slot) => match slot.as_mut() {
                            Some(session) => return self.run(session, inputs),
                            None => continue,
                        },
                        Err(TryLockError::WouldBlock) => continue,
                        Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
                    }
                }
            }
            let s = self
                .sessions
                .get(start % n)
                .ok_or_else(|| RuntimeError::Inference("no session".into()))?;
            let mut slot = s.lock().map_err(|_| poisoned())?;
            if let Some(session) = slot.as_mut() {
                return self.run(session, inputs);
            }
        }
        Err(RuntimeError::Inference(
            "no session in service (the pool is being resized)".into(),
        ))
    }

    fn instances(&self) -> Option<usize> {
        Some(self.active.load(Ordering::Acquire))
    }

    fn set_instances(&self, n: usize) -> Result<Option<usize>, RuntimeError> {
        let poisoned = || RuntimeError::Inference("session lock poisoned".into());
        let n = n.clamp(1, MAX_INSTANCES);
        let _one = self.resize.lock().map_err(|_| poisoned())?;
        let mut active = self.active.load(Ordering::Acquire);
        while active < n {
            // Loaded before it is published: calls never wait for a load.
            let session = new_session(&self.env, &self.path, &self.session)?;
            let slot = self.sessions.get(active).ok_or_else(poisoned)?;
            *slot.lock().map_err(|_| poisoned())? = Some(session);
            active += 1;
            self.active.store(active, Ordering::Release);
        }
        while active > n {
            // Out of service first, so no new call picks it; then wait for
            // the call it may be running (the slot's lock) and drop it.
            active -= 1;
            self.active.store(active, Ordering::Release);
            let slot = self.sessions.get(active).ok_or_else(poisoned)?;
            let retired = slot.lock().map_err(|_| poisoned())?.take();
            drop(retired);
        }
        Ok(Some(active))
    }
}

impl OrtModel {
    fn run(&self, session: &mut Session, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let fail = |e: ort::Error| RuntimeError::Inference(e.to_string());
        let mut values: Vec<(String, ort::session::SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for t in inputs {
            let shape = t.shape.as_slice();
            macro_rules! view {
                ($v:expr) => {
                    TensorRef::from_array_view((shape, $v.as_slice()))
                        .map_err(fail)?
                        .into()
                };
            }
            let value: ort::session::SessionInputValue<'_> = match &t.data {
                TensorData::Bool(v) => view!(v),
                TensorData::Uint8(v) => view!(v),
                TensorData::Uint16(v) => view!(v),
                TensorData::Uint32(v) => view!(v),
                TensorData::Uint64(v) => view!(v),
                TensorData::Int8(v) => view!(v),
                TensorData::Int16(v) => view!(v),
                TensorData::Int32(v) => view!(v),
                TensorData::Int64(v) => view!(v),
                TensorData::Fp16(v) => view!(v),
                TensorData::Fp32(v) => view!(v),
                TensorData::Fp64(v) => view!(v),
                TensorData::Bytes(v) => {
                    let strings = to_strings(&t.name, v)?;
                    ort::value::Tensor::from_string_array((shape, strings.as_slice()))
                        .map_err(fail)?
                        .into()
                }
            };
            values.push((t.name.clone(), value));
        }
        let mut outputs = session.run(values).map_err(fail)?;
        let mut result = Vec::with_capacity(self.signature.outputs.len());
        for (spec, kind) in self.signature.outputs.iter().zip(&self.outputs) {
            let value = outputs.remove(spec.name.as_str()).ok_or_else(|| {
                RuntimeError::Inference(format!("output \"{}\" missing from the run", spec.name))
            })?;
            result.push(match kind {
                OutputKind::Tensor => extract(&spec.name, &value)?,
                OutputKind::ZipMap => zipmap_to_dense(&spec.name, value)?,
            });
        }
        Ok(result)
    }
}

fn extract(name: &str, value: &DynValue) -> Result<Tensor, RuntimeError> {
    let fail = |e: ort::Error| RuntimeError::Inference(format!("output \"{name}\": {e}"));
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(RuntimeError::Inference(format!(
                "output \"{name}\" is {other:?}, not a tensor"
            )));
        }
    };
    macro_rules! take {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(fail)?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => take!(bool, Bool),
        TensorElementType::Uint8 => take!(u8, Uint8),
        TensorElementType::Uint16 => take!(u16, Uint16),
        TensorElementType::Uint32 => take!(u32, Uint32),
        TensorElementType::Uint64 => take!(u64, Uint64),
        TensorElementType::Int8 => take!(i8, Int8),
        TensorElementType::Int16 => take!(i16, Int16),
        TensorElementType::Int32 => take!(i32, Int32),
        TensorElementType::Int64 => take!(i64, Int64),
        TensorElementType::Float16 => take!(f16, Fp16),
        TensorElementType::Float32 => take!(f32, Fp32),
        TensorElementType::Float64 => take!(f64, Fp64),
        TensorElementType::String => {
            let (shape, data) = value.try_extract_strings().map_err(fail)?;
            (
                shape.to_vec(),
                TensorData::Bytes(data.into_iter().map(bytes_free::from_string).collect()),
            )
        }
        other => {
            return Err(RuntimeError::Inference(format!(
                "output \"{name}\" has element type {other:?}, which V2 tensors cannot carry"
            )));
        }
    };
    Tensor::new(name, shape, data).map_err(|e| RuntimeError::Inference(e.to_string()))
}

fn zipmap_to_dense(name: &str, value: DynValue) -> Result<Tensor, RuntimeError> {
    let fail = |e: ort::Error| RuntimeError::Inference(format!("output \"{name}\": {e}"));
    let seq = value.downcast::<DynSequenceValueType>().map_err(fail)?;
    let maps = seq
        .try_extract_sequence::<DynMapValueType>()
        .map_err(fail)?;
    let mut data = Vec::new();
    let mut classes = 0usize;
    for m in &maps {
        let row: Vec<f32> = match m.try_extract_key_values::<i64, f32>() {
            Ok(mut kv) => {
                kv.sort_by_key(|(k, _)| *k);
                kv.into_iter().map(|(_, v)| v).collect()
            }
            Err(_) => {
                let mut kv = m.try_extract_key_values::<String, f32>().map_err(fail)?;
                kv.sort_by(|a, b| a.0.cmp(&b.0));
                kv.into_iter().map(|(_, v)| v).collect()
            }
        };
        if classes == 0 {
            classes = row.len();
        } else if classes != row.len() {
            return Err(RuntimeError::Inference(format!(
                "output \"{name}\": ZipMap rows have different class counts"
            )));
        }
        data.extend(row);
    }
    Tensor::new(
        name,
        vec![maps.len() as i64, classes as i64],
        TensorData::Fp32(data),
    )
    .map_err(|e| RuntimeError::Inference(e.to_string()))
}

/// BYTES <-> ONNX string tensors, which hold UTF-8 text.
mod bytes_free {
    use crate::error::RuntimeError;

    pub fn to_strings(name: &str, v: &[bytes::Bytes]) -> Result<Vec<String>, RuntimeError> {
        v.iter()
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    RuntimeError::Input(format!(
                        "input \"{name}\": BYTES element {i} is not valid UTF-8; ONNX string tensors hold UTF-8 text"
                    ))
                })
            })
            .collect()
    }

    pub fn from_string(s: String) -> bytes::Bytes {
        bytes::Bytes::from(s)
    }
}
