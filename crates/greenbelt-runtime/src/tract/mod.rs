//! The tract backend: pure Rust, nothing to install. Dynamic dimensions the
//! graph leaves unnamed become the symbol `N`, resolved per run.

use std::path::Path;
use std::sync::Arc;

use greenbelt_core::{DataType, Signature, Tensor, TensorData, TensorSpec};
use tract_onnx::prelude::Tensor as TractTensor;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, TDim, TValue, TypedModel,
    TypedSimplePlan, tvec,
};
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::RuntimeError;
use crate::{Backend, Model};

pub struct TractModel {
    plan: Arc<TypedSimplePlan>,
    signature: Signature,
}

impl TractModel {
    pub fn load(path: &Path) -> Result<TractModel, RuntimeError> {
        let load_err = |e: tract_onnx::prelude::TractError| RuntimeError::Load {
            path: path.to_path_buf(),
            reason: format!("tract: {e:#}"),
        };
        let onnx = tract_onnx::onnx();
        // Output names as the graph declares them (tract may rename outlets).
        let output_names: Vec<String> = onnx
            .proto_model_for_path(path)
            .map_err(load_err)?
            .graph
            .map(|g| g.output.into_iter().map(|o| o.name).collect())
            .unwrap_or_default();
        let mut model = onnx.model_for_path(path).map_err(load_err)?;
        let batch = model.symbols.sym("N");
        for i in 0..model.inputs.len() {
            let fact = model.input_fact(i).map_err(load_err)?.clone();
            let Some(dt) = fact.datum_type.concretize() else {
                continue;
            };
            let dims: Vec<TDim> = fact
                .shape
                .dims()
                .map(|d| d.concretize().unwrap_or_else(|| TDim::Sym(batch.clone())))
                .collect();
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, dims))
                .map_err(load_err)?;
        }
        let typed: TypedModel = model.into_optimized().map_err(load_err)?;
        let signature =
            signature_of(&typed, &output_names).map_err(|reason| RuntimeError::Load {
                path: path.to_path_buf(),
                reason,
            })?;
        let plan = typed.into_runnable().map_err(load_err)?;
        Ok(TractModel { plan, signature })
    }
}

fn signature_of(model: &TypedModel, output_names: &[String]) -> Result<Signature, String> {
    let spec =
        |outlet: tract_onnx::prelude::OutletId, fallback: &str| -> Result<TensorSpec, String> {
            let fact = model.outlet_fact(outlet).map_err(|e| e.to_string())?;
            let name = model
                .outlet_label(outlet)
                .map(str::to_string)
                .unwrap_or_else(|| fallback.to_string());
            let datatype = datatype_of(fact.datum_type).ok_or_else(|| {
                format!(
                    "\"{name}\" has type {:?}, which V2 tensors cannot carry",
                    fact.datum_type
                )
            })?;
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().unwrap_or(-1))
                .collect();
            Ok(TensorSpec::new(name, datatype, shape))
        };
    let mut sig = Signature::default();
    for (i, outlet) in model.inputs.iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        let mut s = spec(*outlet, &format!("input_{i}"))?;
        s.name = name;
        sig.inputs.push(s);
    }
    for (i, outlet) in model.outputs.iter().enumerate() {
        let fallback = model.node(outlet.node).name.clone();
        let mut s = spec(
            *outlet,
            if fallback.is_empty() {
                "output"
            } else {
                &fallback
            },
        )
        .map_err(|e| format!("output {i}: {e}"))?;
        if let Some(name) = output_names.get(i) {
            s.name = name.clone();
        }
        sig.outputs.push(s);
    }
    Ok(sig)
}

fn datatype_of(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        // tract's optimizer may carry integer outputs as symbolic dims.
        DatumType::I64 | DatumType::TDim => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn to_tract(t: &Tensor) -> Result<TractTensor, RuntimeError> {
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|d| usize::try_from(*d).unwrap_or(0))
        .collect();
    let fail = |e: tract_onnx::prelude::TractError| {
        RuntimeError::Input(format!("input \"{}\": {e}", t.name))
    };
    match &t.data {
        TensorData::Bool(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint8(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint16(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint32(v) => TractTensor::from_shape(&shape, v),
        TensorData::Uint64(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int8(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int16(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int32(v) => TractTensor::from_shape(&shape, v),
        TensorData::Int64(v) => TractTensor::from_shape(&shape, v),
        TensorData::Fp16(v) => TractTensor::from_shape(&shape, v),
        TensorData::Fp32(v) => TractTensor::from_shape(&shape, v),
        TensorData::Fp64(v) => TractTensor::from_shape(&shape, v),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        RuntimeError::Input(format!(
                            "input \"{}\": BYTES element {i} is not valid UTF-8; ONNX string tensors hold UTF-8 text",
                            t.name
                        ))
                    })
                })
                .collect::<Result<Vec<String>, _>>()?;
            let arr = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, strings)
                .map_err(|e| RuntimeError::Input(format!("input \"{}\": {e}", t.name)))?;
            Ok(TractTensor::from(arr))
        }
    }
    .map_err(fail)
}

fn from_tract(name: &str, t: &TractTensor) -> Result<Tensor, RuntimeError> {
    let fail = |e: tract_onnx::prelude::TractError| {
        RuntimeError::Inference(format!("output \"{name}\": {e}"))
    };
    macro_rules! take {
        ($ty:ty, $variant:ident) => {
            TensorData::$variant(
                t.to_plain_array_view::<$ty>()
                    .map_err(fail)?
                    .iter()
                    .cloned()
                    .collect(),
            )
        };
    }
    let data = match t.datum_type() {
        DatumType::Bool => take!(bool, Bool),
        DatumType::U8 => take!(u8, Uint8),
        DatumType::U16 => take!(u16, Uint16),
        DatumType::U32 => take!(u32, Uint32),
        DatumType::U64 => take!(u64, Uint64),
        DatumType::I8 => take!(i8, Int8),
        DatumType::I16 => take!(i16, Int16),
        DatumType::I32 => take!(i32, Int32),
        DatumType::I64 => take!(i64, Int64),
        DatumType::F16 => take!(half::f16, Fp16),
        DatumType::F32 => take!(f32, Fp32),
        DatumType::F64 => take!(f64, Fp64),
        DatumType::TDim => {
            let cast = t.cast_to::<i64>().map_err(fail)?;
            TensorData::Int64(
                cast.to_plain_array_view::<i64>()
                    .map_err(fail)?
                    .iter()
                    .copied()
                    .collect(),
            )
        }
        DatumType::String => TensorData::Bytes(
            t.to_plain_array_view::<String>()
                .map_err(fail)?
                .iter()
                .map(|s| bytes::Bytes::from(s.clone()))
                .collect(),
        ),
        other => {
            return Err(RuntimeError::Inference(format!(
                "output \"{name}\" has type {other:?}, which V2 tensors cannot carry"
            )));
        }
    };
    let shape = t.shape().iter().map(|d| *d as i64).collect();
    Tensor::new(name, shape, data).map_err(|e| RuntimeError::Inference(e.to_string()))
}

impl Model for TractModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn backend(&self) -> Backend {
        Backend::Tract
    }

    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        // tract takes inputs in graph order.
        let mut ordered: tract_onnx::prelude::TVec<TValue> = tvec![];
        for spec in &self.signature.inputs {
            let t = inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| RuntimeError::Input(format!("missing input \"{}\"", spec.name)))?;
            ordered.push(to_tract(t)?.into());
        }
        let outputs = self
            .plan
            .run(ordered)
            .map_err(|e| RuntimeError::Inference(format!("{e:#}")))?;
        self.signature
            .outputs
            .iter()
            .zip(outputs.iter())
            .map(|(spec, t)| from_tract(&spec.name, t))
            .collect()
    }
}
